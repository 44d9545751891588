// bento serve: keeps the view up to date without reloading. The server
// sends one "change" event per new snapshot of the fleet (server-sent
// events); the page then fetches its own view again (the #live fragment)
// and swaps it in. The fragment is HTML the server escaped; it is parsed
// into an inert document first, so nothing in it runs.
"use strict";
(function () {
  var main = document.getElementById("live");
  if (!main || !window.EventSource || !window.fetch) {
    return;
  }
  var badge = document.getElementById("live-state");
  var gen = main.dataset.gen;
  var busy = false;
  var again = false;

  function setBadge(state) {
    if (badge) {
      badge.dataset.state = state;
    }
  }

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var view = doc.querySelector(".view");
    if (!view) {
      return;
    }
    main.replaceChildren(document.adoptNode(view));
    gen = view.dataset.gen;
    main.dataset.gen = gen;
    var t = badge && badge.querySelector("time");
    if (t && view.dataset.generated) {
      t.textContent = view.dataset.generated;
    }
  }

  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    fetch(main.dataset.live, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) {
          throw new Error(r.status + " " + r.statusText);
        }
        return r.text();
      })
      .then(swap)
      .catch(function () {
        setBadge("off");
      })
      .finally(function () {
        busy = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  // The browser reconnects by itself after a dropped stream, but not
  // after an error answer (503: too many streams; the server restarting):
  // then a new stream is opened after a while, and the view fetched again.
  function connect() {
    var es = new EventSource("/events?gen=" + encodeURIComponent(gen));
    es.addEventListener("open", function () {
      setBadge("on");
    });
    es.addEventListener("error", function () {
      setBadge("off");
      if (es.readyState === EventSource.CLOSED) {
        setTimeout(connect, 5000 + Math.random() * 5000);
      }
    });
    es.addEventListener("change", function (e) {
      setBadge("on");
      if (e.data !== gen) {
        refresh();
      }
    });
  }
  connect();
})();

package serve

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-nix/bento/status/render"
)

// metricsCollector gives client_golang's registry the gauges of bento
// status --prometheus (render.Metrics) of the latest snapshot. It is an
// unchecked collector (Describe sends nothing): the host labels come and
// go with the fleet.
type metricsCollector struct{ s *Server }

func (metricsCollector) Describe(chan<- *prometheus.Desc) {}

func (m metricsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFirst)
	defer cancel()
	v, err := m.s.current(ctx)
	if err != nil || v.snap == nil {
		return
	}
	for _, g := range render.Metrics(v.snap) {
		// One Desc per gauge: its samples share the label names, and a
		// Desc is costly to build (13 states × 1000 hosts of them).
		var desc *prometheus.Desc
		for _, smp := range g.Samples {
			names := make([]string, 0, len(smp.Labels)/2)
			values := make([]string, 0, len(smp.Labels)/2)
			for i := 0; i+1 < len(smp.Labels); i += 2 {
				names = append(names, smp.Labels[i])
				values = append(values, smp.Labels[i+1])
			}
			if desc == nil {
				desc = prometheus.NewDesc(g.Name, g.Help, names, nil)
			}
			metric, err := prometheus.NewConstMetric(desc, prometheus.GaugeValue, smp.Value, values...)
			if err != nil {
				ch <- prometheus.NewInvalidMetric(desc, err)
				continue
			}
			ch <- metric
		}
	}
}

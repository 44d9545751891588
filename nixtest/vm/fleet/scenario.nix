# Which VM test this fleet serves: the VM tests rewrite this file.
{
  bentoTest.scenario = "happy-path";
}

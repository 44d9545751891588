# The version of the fleet: the VM tests rewrite this file to publish a change.
{
  bentoTest.version = 1;
}

"""The node's tests over DDS (a package, so that its conftest does not shadow the suite's own
`conftest` module, which tests import helpers from)."""

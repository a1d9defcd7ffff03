"""Tests through the real `ros2` command line (a package, so that its conftest does not shadow
the suite's own `conftest` module, which tests import helpers from)."""

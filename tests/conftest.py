"""Test-suite wide set-up: the shared control-plane test-bed fixtures (``testbed``,
``kubectl``, ``crd``, ``namespace``) registered once as a plugin, so every folder that uses
them shares one control plane per session."""

pytest_plugins = ["tests.support.testbed"]

"""Test-suite wide set-up: the shared control-plane test-bed fixtures (``testbed``,
``kubectl``, ``crd``, ``namespace``) registered once as a plugin, so every folder that uses
them shares one control plane per session; and property tests whose examples do not depend on
which other tests are collected (``tests.support.hypothesis_constants``)."""

pytest_plugins = ["tests.support.testbed", "tests.support.hypothesis_constants"]

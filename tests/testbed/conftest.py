"""Registers the shared test-bed plugin (fixtures ``testbed``, ``kubectl``, ``crd``,
``namespace``) for the tests in this folder; see testbed_plugin.py for why it is a plugin."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PLUGIN_NAME = "trainscale_testbed_plugin"


def load_plugin() -> ModuleType:
    """Import tests/testbed/testbed_plugin.py once per process, under one fixed name."""
    if PLUGIN_NAME in sys.modules:
        return sys.modules[PLUGIN_NAME]
    path = Path(__file__).with_name("testbed_plugin.py")
    spec = importlib.util.spec_from_file_location(PLUGIN_NAME, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[PLUGIN_NAME] = module
    spec.loader.exec_module(module)
    return module


_plugin = load_plugin()  # importable by test modules as `trainscale_testbed_plugin`


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(_plugin, PLUGIN_NAME)

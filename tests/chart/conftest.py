"""Shared fixtures of the chart tests: the real helm binary and a renderer around it.

helm is built from its Go module (pinned in scripts/testbed/versions.env) by the test-bed's
``scripts/testbed/build.sh``, with kubectl and the control plane; :func:`find_helm` takes it
from there (building it when missing); ``TRAINSCALE_HELM`` points at any other helm.

The test-bed tests (``test_chart_testbed.py``, marker ``testbed``) use the shared test-bed
plugin (tests/support/testbed.py, fixtures ``testbed``, ``kubectl``, ``crd``, ``namespace``),
registered once by the root conftest: one control plane per session.
"""

from __future__ import annotations

import copy
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainscale.testbed.cluster import fetch_bin_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "trainscale"
RELEASE = "trainscale"
RELEASE_NAMESPACE = "trainscale-system"


def find_helm() -> Path:
    """Return the path of a helm binary: ``TRAINSCALE_HELM``, else the test-bed's build.

    Raises:
        FileNotFoundError: ``TRAINSCALE_HELM`` names no executable, or the build has no helm.
    """
    override = os.environ.get("TRAINSCALE_HELM")
    if override:
        if not os.access(override, os.X_OK):
            raise FileNotFoundError(f"TRAINSCALE_HELM={override} is not an executable")
        return Path(override)
    candidate = fetch_bin_dir(build=True) / "helm"
    if not os.access(candidate, os.X_OK):
        raise FileNotFoundError(f"{candidate} is missing: run scripts/testbed/build.sh")
    return candidate


class Helm:
    """Runs helm with throw-away config/cache/data folders (helm needs them writable)."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = dict(os.environ)
        self.env.update(
            HOME=str(home),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_DATA_HOME=str(home / "data"),
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    def template_text(self, values: Mapping[str, Any] | None = None, *extra: str) -> str:
        """``helm template`` the chart with ``values`` (a dict) and return the YAML text."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            yaml.safe_dump(dict(values or {}), fh)
        try:
            done = self.run(
                "template",
                RELEASE,
                str(CHART_DIR),
                "--namespace",
                RELEASE_NAMESPACE,
                "--values",
                fh.name,
                *extra,
            )
        finally:
            os.unlink(fh.name)
        return done.stdout

    def template(
        self, values: Mapping[str, Any] | None = None, *extra: str
    ) -> list[dict[str, Any]]:
        """``helm template`` the chart and return the rendered objects."""
        return [d for d in yaml.safe_load_all(self.template_text(values, *extra)) if d]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(find_helm(), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def render(helm: Helm) -> Callable[..., list[dict[str, Any]]]:
    """Render the chart with the given values (cached per values; callers get a copy)."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        key = yaml.safe_dump(dict(values or {}), sort_keys=True)
        if key not in cache:
            cache[key] = helm.template(values)
        return copy.deepcopy(cache[key])

    return _render

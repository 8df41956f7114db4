"""Packaging: the import names the issue promises, and no stdlib shadowing.

Covers: `trainscale.operator` and `trainscale.trainer` import; the stdlib `operator`
module stays the stdlib's from the repository root with plain `python -c` (no safe-path flag);
the operator imports no torch; the product wheel carries no dev tooling (test-bed, simulator).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    # Without Python's safe-path flag (-P or its environment variable), if anyone set it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONSAFE")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout


def test_stdlib_operator_is_not_shadowed_from_the_repo_root() -> None:
    out = _run(
        "import sys, operator, dataclasses, trainscale.operator as t;"
        "print(sys.path[0] == '', operator.eq(1, 1), t.__name__)"
    )
    # sys.path[0] == '' : the repository root (the current directory) comes first, as with
    # any `python -c` run there, and still nothing in it shadows the standard library.
    assert out.split() == ["True", "True", "trainscale.operator"]


@pytest.mark.slow  # a subprocess or a wheel build: in make test, not make unit
def test_operator_runtime_modules_import_without_torch() -> None:
    out = _run(
        "import sys, trainscale.operator.daemons.handlers, trainscale.operator.app.cli, trainscale.trainer.contract.metric_names;"
        "print('torch' in sys.modules)"
    )
    assert out.strip() == "False"


@pytest.mark.slow  # a subprocess or a wheel build: in make test, not make unit
def test_the_product_wheel_carries_no_dev_tooling(tmp_path: Path) -> None:
    """What `pip install trainscale` gets: the operator and the trainer, never the test-bed or
    the simulated jobs (they live in tools/testbed, a distribution of their own)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("trainscale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert "trainscale/operator/app/cli.py" in modules
    assert "trainscale/trainer/launch/cli.py" in modules
    assert "trainscale/trainer/contract/metric_names.py" in modules
    leaked = sorted(
        n for n in modules if not n.startswith(("trainscale/operator/", "trainscale/trainer/"))
    )
    assert leaked == []
    assert not any("testbed" in n or "simjob" in n for n in names)


def test_the_trainscale_command_offers_no_dev_tooling() -> None:
    cli = Path(sys.executable).with_name("trainscale")
    out = subprocess.run([str(cli), "--help"], check=True, capture_output=True, text=True).stdout
    assert "operator" in out and "crd" in out
    assert "testbed" not in out

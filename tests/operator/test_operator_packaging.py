"""Packaging: the import names the issue promises, and no stdlib shadowing.

Covers: `trainscale.operator` and `trainscale.trainer` import; the stdlib `operator`
module stays the stdlib's even from the repository root; the operator imports no torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONSAFEPATH="1")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout


def test_stdlib_operator_is_not_shadowed_from_the_repo_root() -> None:
    out = _run("import operator, trainscale.operator as t; print(operator.eq(1, 1), t.__name__)")
    assert out.split() == ["True", "trainscale.operator"]


def test_operator_runtime_modules_import_without_torch() -> None:
    out = _run(
        "import sys, trainscale.operator.handlers, trainscale.operator.cli, trainscale.trainer.metric_names;"
        "print('torch' in sys.modules)"
    )
    assert out.strip() == "False"

"""The operator works with the lowest dependency versions pyproject.toml allows.

A range that claims more than the code supports installs cleanly and fails at the first API
call (the Kubernetes adapter once used client methods new in 37 while pyproject said >=31).
``scripts/lowest-deps.sh`` installs every product dependency at its lower bound in a fresh
virtualenv and runs the operator's unit tests and its kmock tests (the real kopf and
kubernetes client) there; with ``kubernetes>=36`` it fails (9 tests), with the declared
``>=37`` it passes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.registry
@pytest.mark.timeout(1200)
def test_the_operator_passes_its_tests_at_the_lowest_allowed_versions(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "lowest-deps.sh"), str(tmp_path / "venv")],
        capture_output=True, text=True, timeout=1100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "kubernetes==37.0.0" in done.stdout, done.stdout[:2000]

"""The property tests' examples do not depend on which other modules are loaded.

Hypothesis draws constants found in loaded local modules;
``tests/support/hypothesis_constants.py`` (registered for the whole suite) empties that pool.
This checks it: a derandomized test draws the same floats before and after a new local
module full of float constants is imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st


def _draws() -> list[float]:
    seen: list[float] = []

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(st.floats(0.0, 1.0))
    def collect(x: float) -> None:
        seen.append(x)

    collect()
    return seen


def test_examples_ignore_constants_of_newly_loaded_modules(tmp_path: Path) -> None:
    before = _draws()
    source = "\n".join(f"C{i} = {0.001 * i + 0.000123:.6f}" for i in range(1, 900))
    path = tmp_path / "policy_constants_probe.py"
    path.write_text(source + "\n")
    spec = importlib.util.spec_from_file_location("policy_constants_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["policy_constants_probe"] = module
    try:
        spec.loader.exec_module(module)
        after = _draws()
    finally:
        del sys.modules["policy_constants_probe"]
    assert after == before


def test_every_property_test_is_derandomized_without_a_deadline() -> None:
    # the suite-wide profile: a test without its own @settings inherits these
    assert settings.default is not None
    assert settings.default.derandomize is True
    assert settings.default.deadline is None
    assert settings.default.database is None

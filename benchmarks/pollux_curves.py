"""Regenerate the speedup curves built from Pollux's measured step times.

Why this script exists: the benchmark's measured curves (``benchmarks/data/curves/pollux-*``)
are derived data; this writes them from the transcribed measurements
(``benchmarks/data/pollux``) with the rules of :mod:`trainscale.testbed.pollux`, and a test
checks that the committed files equal a fresh regeneration.

Run:  .venv/bin/python benchmarks/pollux_curves.py
"""

from __future__ import annotations

import sys

from trainscale.testbed.pollux import CURVES_DIR, benchmark_curves


def main() -> int:
    CURVES_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in benchmark_curves().items():
        path = CURVES_DIR / name
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({text.count(chr(10)) - 1} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

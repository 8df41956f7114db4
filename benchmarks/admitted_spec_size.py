"""What one job's held pod spec costs the operator, whole and trimmed.

Why this script exists: the operator holds each arbitrated job's admitted pod spec (a
dry-run create's answer) between passes, and at 1,000 jobs the whole specs were about 15 MiB
of its live objects. ``trim_scheduling_spec`` keeps what the node filters and the requests
read. This decodes the worker pod spec of each example job 1,000 times, as the adapter
decodes a dry run's answer, keeps the copies, and reads ``tracemalloc``'s bytes per copy,
whole and trimmed. (A dry run's answer also carries admission's defaults: a security
context, default tolerations; the whole figures here are a lower bound.)

Run:  .venv/bin/python benchmarks/admitted_spec_size.py [--copies 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from trainscale.operator import api
from trainscale.operator.autoscaling.cluster import trim_scheduling_spec
from trainscale.operator.controller.builders import JobRef, build_worker_pod

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def held_bytes(text: str, keep: Callable[[dict[str, Any]], Any], copies: int) -> float:
    """Bytes per copy of ``keep(json.loads(text))``, the copies all alive."""
    tracemalloc.start()
    held = [keep(json.loads(text)) for _ in range(copies)]
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del held
    return current / copies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=1000)
    args = parser.parse_args(argv)
    print("| example job | worker pod spec, JSON bytes | held whole, KiB | held trimmed, KiB |")
    print("|---|---|---|---|")
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text()):
            if not body or body.get("kind") != api.KIND:
                continue
            spec = api.TrainingJobSpec.model_validate(body["spec"])
            job = JobRef(name=body["metadata"]["name"], namespace="team", uid="uid")
            text = json.dumps(build_worker_pod(job, spec, 0)["spec"])
            whole = held_bytes(text, lambda s: s, args.copies)
            trimmed = held_bytes(text, trim_scheduling_spec, args.copies)
            print(f"| {path.name} ({job.name}) | {len(text):,} | {whole / 1024:.1f} | "
                  f"{trimmed / 1024:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The trainer tests' audit helpers: read the per-rank sample-id logs the runtime writes and
check that every sample of every epoch was trained exactly once across resizes."""

from __future__ import annotations

from typing import Any

from trainscale.trainer.contract.audit import read_audit

__all__ = ["assert_exact_data_order", "lineage", "read_audit"]


def lineage(entries: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """For each global step, the records of the world that ran it last.

    A step can run twice: once in a world that died before checkpointing it, again after the
    resume. Only the last run is in the final model's history.
    """
    by_step: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for entry in entries:
        by_step.setdefault(entry["step"], {}).setdefault(entry["world_id"], []).append(entry)
    final = {}
    for step, worlds in by_step.items():
        final[step] = max(worlds.values(), key=lambda records: max(r["time"] for r in records))
    return final


def assert_exact_data_order(
    entries: list[dict[str, Any]], dataset_length: int, epochs: int
) -> None:
    """No sample skipped or seen twice within any epoch of the final history."""
    history = lineage(entries)
    steps = sorted(history)
    assert steps == list(range(1, len(steps) + 1)), "a step is missing from the history"
    per_epoch: dict[int, list[int]] = {}
    for step in steps:
        records = history[step]
        world = records[0]["world_size"]
        assert sorted(r["rank"] for r in records) == list(range(world)), f"step {step} ranks"
        assert len({(r["epoch"], r["start"], r["stop"]) for r in records}) == 1
        ids = [i for r in sorted(records, key=lambda r: r["rank"]) for i in r["ids"]]
        assert len(ids) == records[0]["stop"] - records[0]["start"], f"step {step} size"
        per_epoch.setdefault(records[0]["epoch"], []).extend(ids)
    assert sorted(per_epoch) == list(range(epochs))
    for epoch, ids in per_epoch.items():
        assert len(ids) == len(set(ids)), f"epoch {epoch}: a sample was trained on twice"
        assert sorted(ids) == list(range(dataset_length)), f"epoch {epoch}: samples skipped"

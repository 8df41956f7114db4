"""Batch semantics across world sizes and the LR scaling rules.

Covers:
- constant-global keeps the global batch at every world size, shares = ceil(B / W);
- micro-batches and gradient accumulation derived from the share;
- fixed-per-worker grows the global batch; linear and sqrt LR scaling vs a reference size;
- refusing an LR rule with constant-global, and other bad settings, by name.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainscale.trainer.runtime.batching import (
    BatchSettings,
    BatchSettingsError,
    compute_lr_scale,
    decide_batch_plan,
)


@pytest.mark.parametrize(
    ("settings", "world", "expected"),
    [
        pytest.param(BatchSettings(global_batch=64), 1, (64, 64, 64, 1, 1.0), id="one"),
        pytest.param(BatchSettings(global_batch=64), 3, (64, 22, 22, 1, 1.0), id="three"),
        pytest.param(
            BatchSettings(global_batch=64, micro_batch=8), 2, (64, 32, 8, 4, 1.0), id="accumulate"
        ),
        pytest.param(
            BatchSettings(global_batch=64, micro_batch=10), 3, (64, 22, 10, 3, 1.0), id="uneven"
        ),
        pytest.param(
            BatchSettings(mode="fixed-per-worker", per_worker_batch=16, lr_scaling="linear"),
            4,
            (64, 16, 16, 1, 4.0),
            id="linear",
        ),
        pytest.param(
            BatchSettings(
                mode="fixed-per-worker",
                per_worker_batch=16,
                lr_scaling="sqrt",
                reference_world_size=2,
            ),
            8,
            (128, 16, 16, 1, 2.0),
            id="sqrt",
        ),
    ],
)
def test_plan_table(settings: BatchSettings, world: int, expected: tuple) -> None:
    plan = decide_batch_plan(settings, world)
    got = (
        plan.global_batch,
        plan.per_worker_batch,
        plan.micro_batch,
        plan.accumulation_steps,
        plan.lr_scale,
    )
    assert got == expected


@given(batch=st.integers(1, 4096), world=st.integers(1, 128), micro=st.integers(1, 512))
def test_constant_global_covers_the_batch(batch: int, world: int, micro: int) -> None:
    plan = decide_batch_plan(BatchSettings(global_batch=batch, micro_batch=micro), world)
    assert plan.global_batch == batch
    assert plan.per_worker_batch * world >= batch > (plan.per_worker_batch - 1) * world
    assert plan.micro_batch * plan.accumulation_steps >= plan.per_worker_batch
    assert plan.micro_batch * (plan.accumulation_steps - 1) < plan.per_worker_batch


@given(world=st.integers(1, 256), ref=st.integers(1, 64))
def test_lr_rules(world: int, ref: int) -> None:
    assert compute_lr_scale("none", world, ref) == 1.0
    assert compute_lr_scale("linear", world, ref) == pytest.approx(world / ref)
    assert compute_lr_scale("sqrt", world, ref) == pytest.approx(math.sqrt(world / ref))


@pytest.mark.parametrize(
    ("settings", "world", "message"),
    [
        pytest.param(BatchSettings(global_batch=0), 2, "global_batch", id="zero-batch"),
        pytest.param(BatchSettings(lr_scaling="linear"), 2, "fixed-per-worker", id="rule"),
        pytest.param(BatchSettings(mode="fixed-per-worker"), 2, "per_worker_batch", id="fixed"),
        pytest.param(BatchSettings(micro_batch=0), 2, "micro_batch", id="micro"),
        pytest.param(BatchSettings(), 0, "world_size", id="world"),
        pytest.param(BatchSettings(mode="bogus"), 1, "mode", id="mode"),  # type: ignore[arg-type]
        pytest.param(
            BatchSettings(mode="fixed-per-worker", per_worker_batch=4, reference_world_size=0),
            1,
            "reference_world_size",
            id="reference",
        ),
    ],
)
def test_bad_settings_are_named(settings: BatchSettings, world: int, message: str) -> None:
    with pytest.raises(BatchSettingsError, match=message):
        decide_batch_plan(settings, world)

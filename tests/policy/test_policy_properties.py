"""Property tests of ``recommend`` (hypothesis).

Covers:
- the answer is always within [minReplicas, maxReplicas], whatever the observations;
- with no metric values at all it holds (and says metrics are stale);
- under noisy stationary metrics it settles and does not flap;
- it converges near the best count on linear, Amdahl-like and peaked curves, for each
  objective.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.policy_sim import (
    COMPUTE_FRACTION,
    RATE,
    amdahl,
    linear,
    make_spec,
    peaked,
    simulate,
)
from trainscale.operator.autoscaling.policy import Observation, recommend

observation = st.builds(
    Observation,
    timestamp=st.floats(0, 1000),
    replicas=st.integers(0, 40),
    gpu_utilization=st.none() | st.floats(0, 1),
    samples_per_second=st.none() | st.floats(0, 1e6),
)


@settings(max_examples=200, deadline=None)
@given(
    lo=st.integers(1, 8),
    span=st.integers(0, 24),
    current=st.integers(0, 40),
    observations=st.lists(observation, max_size=40),
    objective=st.sampled_from(["efficiency", "budget", "utilization"]),
    pending=st.integers(0, 3),
    data=st.data(),
)
def test_always_within_bounds(lo, span, current, observations, objective, pending, data) -> None:  # type: ignore[no-untyped-def]
    hi = lo + span
    spec = make_spec(replicas=lo, lo=lo, hi=hi, objective=objective, maxCostPerHour=10.0)
    pending = min(pending, current)
    unschedulable = data.draw(st.integers(0, pending))
    rec = recommend(
        spec,
        observations,
        current,
        1000.0,
        pending_replicas=pending,
        unschedulable_replicas=unschedulable,
        recent_targets=data.draw(st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 50)))),
    )
    assert lo <= rec.replicas <= hi
    assert lo <= rec.target <= hi
    assert rec.reason


@settings(max_examples=50, deadline=None)
@given(
    current=st.integers(1, 16),
    times=st.lists(st.floats(0, 1000), max_size=30),
    objective=st.sampled_from(["efficiency", "budget", "utilization"]),
)
def test_holds_without_metric_values(current, times, objective) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(replicas=current, hi=16, objective=objective, maxCostPerHour=100.0)
    rec = recommend(spec, [Observation(t, current) for t in times], current, 1000.0)
    assert rec.replicas == current
    assert rec.metrics_stale


curves = st.one_of(
    st.just(("linear", linear)),
    st.floats(0.005, 0.1).map(lambda b: (f"amdahl({b:.3f})", amdahl(b))),
    st.tuples(st.floats(0.0, 0.03), st.floats(0.001, 0.01)).map(
        lambda p: (f"peaked({p[0]:.3f},{p[1]:.4f})", peaked(*p))
    ),
)


@settings(max_examples=12, deadline=None)
@given(curve=curves, noise=st.floats(0.0, 0.1), seed=st.integers(0, 1000), start=st.integers(2, 12))
def test_no_flapping_under_noisy_stationary_metrics(curve, noise, seed, start) -> None:  # type: ignore[no-untyped-def]
    _, tau = curve
    trace = simulate(make_spec(replicas=start, hi=24), tau, hours=3, noise=noise, seed=seed)
    assert trace.reversals <= 1, trace.replicas
    # nothing moves in the last hour: it has settled
    assert len(set(trace.replicas[-120:])) == 1, trace.replicas


def best_static(objective: str, tau, lo: int, hi: int) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    def x(n: int) -> float:
        return RATE * n / tau(n)

    if objective == "efficiency":
        ok = [n for n in range(lo, hi + 1) if 1 / tau(n) >= 0.7]
    elif objective == "budget":
        ok = list(range(lo, min(hi, 12) + 1))
    else:
        ok = [n for n in range(lo, hi + 1) if COMPUTE_FRACTION / tau(n) >= 0.8] or [lo]
        n = max(ok)
        return n, x(n)
    n = max(ok, key=x)
    return n, x(n)


@settings(max_examples=12, deadline=None)
@given(
    curve=curves,
    objective=st.sampled_from(["efficiency", "budget", "utilization"]),
    seed=st.integers(0, 1000),
    start=st.integers(1, 12),
)
def test_converges_near_the_best_count(curve, objective, seed, start) -> None:  # type: ignore[no-untyped-def]
    name, tau = curve
    spec = make_spec(replicas=start, hi=24, objective=objective, maxCostPerHour=12.0)
    trace = simulate(spec, tau, hours=3, noise=0.03, seed=seed)
    final = trace.replicas[-1]
    best, best_x = best_static(objective, tau, 1, 24)
    got_x = RATE * final / tau(final)
    assert got_x >= 0.9 * best_x, (name, objective, final, best, trace.replicas[::10])
    if objective == "efficiency":
        assert 1 / tau(final) >= 0.7 * 0.9, (name, final, best)
    if objective == "utilization":
        assert COMPUTE_FRACTION / tau(final) >= 0.8 * 0.9, (name, final, best)
    if objective == "budget":
        assert final <= 12
    assert not math.isnan(got_x)

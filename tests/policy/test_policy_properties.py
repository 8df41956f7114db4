"""Property tests of ``recommend`` (hypothesis), deterministic: CI never fails by chance.

Every test runs with ``derandomize=True`` and no example database, and without the
constants Hypothesis would collect from other loaded modules (``conftest.py``), so the
same examples run everywhere, whichever tests are collected, plus explicit ``@example``
rows: the counterexamples found so far are regression cases here, named in the comment
above them.

Covers:
- the answer is always within [minReplicas, maxReplicas], whatever the observations, also
  when the objective asks for more than maxReplicas or fewer than minReplicas;
- with no metric values at all it holds (and says metrics are stale);
- under noisy stationary metrics it settles and does not flap;
- it converges near the best count on linear, Amdahl-like and peaked curves, for each
  objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from tests.support.policy_sim import (
    COMPUTE_FRACTION,
    RATE,
    amdahl,
    linear,
    make_spec,
    peaked,
    simulate,
    steady,
)
from trainscale.operator.autoscaling.policy import Observation, recommend


def deterministic(max_examples: int) -> settings:
    """Same examples on every run and machine; no example database to replay; no shrinking
    (a failing simulation is reported as drawn: shrinking one replays hours of decisions)."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
    )


observation = st.builds(
    Observation,
    timestamp=st.floats(0, 1000),
    replicas=st.integers(0, 40),
    gpu_utilization=st.none() | st.floats(0, 1),
    samples_per_second=st.none() | st.floats(0, 1e6),
)


@st.composite
def histories(draw: st.DrawFn) -> list[Observation]:
    """Settled histories on a speedup curve (which a fit can use), ending at t <= 1000,
    mixed with arbitrary observations: the objective then really asks for counts, also
    beyond the bounds."""
    tau = draw(st.sampled_from([linear, amdahl(0.02), amdahl(0.2), peaked(0.05, 0.05)]))
    counts = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    per = draw(st.integers(2, 12))
    out: list[Observation] = []
    start = 1000.0 - 30.0 * per * len(counts)
    for i, n in enumerate(counts):
        out += steady(n, start=start + 30.0 * per * i, count=per, tau=tau)
    return out + draw(st.lists(observation, max_size=5))


def _tail_count(observations: list[Observation]) -> int:
    return max(observations, key=lambda o: o.timestamp).replicas if observations else 0


@deterministic(150)
@given(
    lo=st.integers(1, 8),
    span=st.integers(0, 24),
    current=st.none() | st.integers(0, 40),
    observations=histories() | st.lists(observation, max_size=40),
    objective=st.sampled_from(["efficiency", "budget", "utilization"]),
    pending=st.integers(0, 3),
    data=st.data(),
)
# A linear job at maxReplicas: the objective asks for twice as many.
@example(lo=1, span=7, current=None, observations=steady(8, start=730), objective="efficiency",
         pending=0, data=None)  # fmt: skip
@example(lo=1, span=7, current=None, observations=steady(8, start=730), objective="utilization",
         pending=0, data=None)  # fmt: skip
# A communication-bound job at minReplicas: the objective asks for fewer.
@example(lo=6, span=10, current=None, observations=steady(6, start=730, tau=peaked(0.2, 0.05)),
         objective="efficiency", pending=0, data=None)  # fmt: skip
def test_always_within_bounds(lo, span, current, observations, objective, pending, data) -> None:  # type: ignore[no-untyped-def]
    hi = lo + span
    spec = make_spec(replicas=lo, lo=lo, hi=hi, objective=objective, maxCostPerHour=10.0)
    if current is None:  # the job runs what the observations show
        current = _tail_count(observations)
    pending = min(pending, current)
    unschedulable = data.draw(st.integers(0, pending)) if data else 0
    targets = data.draw(st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 50)))) if data else []
    rec = recommend(
        spec,
        observations,
        current,
        1000.0,
        pending_replicas=pending,
        unschedulable_replicas=unschedulable,
        recent_targets=targets,
    )
    assert lo <= rec.replicas <= hi
    assert lo <= rec.target <= hi
    assert rec.reason


@deterministic(50)
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


Curve = tuple[str, Callable[[int], float]]

curves = st.one_of(
    st.just(("linear", linear)),
    st.floats(0.005, 0.1).map(lambda b: (f"amdahl({b:.3f})", amdahl(b))),
    st.tuples(st.floats(0.0, 0.03), st.floats(0.001, 0.01)).map(
        lambda p: (f"peaked({p[0]:.3f},{p[1]:.4f})", peaked(*p))
    ),
)


@pytest.mark.slow  # closed-loop runs, ~4 s: in make test, not make unit
@deterministic(10)
@given(curve=curves, noise=st.floats(0.0, 0.1), seed=st.integers(0, 1000), start=st.integers(2, 12))
# Flapped 4 -> 5 -> 8 -> 7 and moved in the last hour (the floor band held 7 at 0.68).
@example(curve=("amdahl(0.078)", amdahl(0.078)), noise=0.0625, seed=1, start=4)
# Sat at 5, then moved to 6 in the last hour.
@example(curve=("peaked(0.0,0.01)", peaked(0.0, 0.01)), noise=0.03125, seed=206, start=12)
# Sat at 5 for over two hours, then probed 6 (predicted 0.67 < floor 0.70) in the last hour.
@example(curve=("amdahl(0.1)", amdahl(0.1)), noise=0.09521201603640804, seed=344, start=10)
def test_no_flapping_under_noisy_stationary_metrics(curve: Curve, noise, seed, start) -> None:  # type: ignore[no-untyped-def]
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


@pytest.mark.slow  # closed-loop runs, ~4 s: in make test, not make unit
@deterministic(10)
@given(
    curve=curves,
    objective=st.sampled_from(["efficiency", "budget", "utilization"]),
    seed=st.integers(0, 1000),
    start=st.integers(1, 12),
)
# Stayed at 4, one short of the best count 5 (efficiency 0.715 > floor 0.70).
@example(curve=("amdahl(0.0996)", amdahl(0.0996)), objective="efficiency", seed=3, start=3)
def test_converges_near_the_best_count(curve: Curve, objective, seed, start) -> None:  # type: ignore[no-untyped-def]
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

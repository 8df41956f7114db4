"""A curve that changes under a running job: told from noise, and what was measured on the
old curve forgotten (``trainscale.operator.autoscaling.change``)."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import pytest

from tests.support.policy_sim import COMPUTE_FRACTION, RATE, amdahl, make_spec, simulate
from trainscale.operator.autoscaling.change import find_curve_change
from trainscale.operator.autoscaling.policy import Observation, _noise_inflation

CHANGE_AT = 2 * 3600.0


def _stay(replicas: int, taus: list[float]) -> list[Observation]:
    """One stay at ``replicas``, throughput every 30 s at the given step times (0: restarting)."""
    return [
        Observation(30.0 * i, replicas, None, RATE * replicas / tau if tau else 0.0)
        for i, tau in enumerate(taus)
    ]


def _noisy(level: float, count: int, noise: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [level * (1.0 + rng.gauss(0.0, noise)) for _ in range(count)]


def _shared(level: float, count: int, noise: float, seed: int, window: int) -> list[float]:
    """Step times whose noise arises in the training, read as ``rate()`` reads it: each
    sample averages ``window`` intervals' draws, so neighbours share them (a 60 s window
    scraped every 30 s: ``window`` 2); each sample's own noise is still ``noise``."""
    rng = random.Random(seed)
    draws = [rng.gauss(0.0, 1.0) for _ in range(count + window - 1)]
    return [
        level * (1.0 + noise * sum(draws[i : i + window]) / math.sqrt(window)) for i in range(count)
    ]


@pytest.mark.parametrize(
    ("runs", "low", "high"),
    [
        pytest.param([_noisy(1.2, 100, 0.05, s) for s in range(4)], 1.0, 1.3, id="independent"),
        # a 60 s window every 30 s: 1 + 2 * 0.5
        pytest.param([_shared(1.2, 100, 0.05, s, 2) for s in range(4)], 1.6, 2.5,
                     id="two-scrapes-a-window"),
        # 5 s every second (the real-loop test-bed): 1 + 2 * (0.8 + 0.6 + 0.4 + 0.2) = 5
        pytest.param([_shared(1.2, 100, 0.05, s, 5) for s in range(4)], 3.8, 6.5,
                     id="five-scrapes-a-window"),
        # each run about its own level: stays at different counts are not one wandering run
        pytest.param([_noisy(1.0 + 0.3 * s, 100, 0.05, s) for s in range(4)], 1.0, 1.3,
                     id="levels-apart-are-no-correlation"),
        pytest.param([_noisy(1.2, 15, 0.05, 1)], 1.0, 1.0, id="too-few-samples-to-tell"),
        pytest.param([list(itertools.accumulate(_noisy(1.0, 200, 0.05, 2), lambda a, b: a * b))],
                     10.0, 10.0, id="a-random-walk-is-capped"),
    ],
)  # fmt: skip
def test_noise_inflation(runs: list[list[float]], low: float, high: float) -> None:
    assert low <= _noise_inflation(runs) <= high


def _first_change(taus: list[float]) -> float | None:
    """The change a job would find at 8 workers, checking after every new sample."""
    stay = _stay(8, taus)
    return next(
        (t for k in range(24, len(stay) + 1) if (t := find_curve_change(stay[:k])) is not None),
        None,
    )


@pytest.mark.parametrize(("window", "allowed"), [(1, 0), (2, 0), (5, 1)])
def test_noise_shared_by_overlapping_rate_windows_is_no_change(window: int, allowed: int) -> None:
    """An hour at one count, 10 % noise, checked every interval as the autoscaler does, on
    40 seeds: counted as independent, scrapes that share their window's noise "found" a
    change in 12 of the 40 hours at 5 scrapes a window (a job in the benchmark then forgot
    its curve and rescaled 9 times); at the measured autocorrelation and the doubt of the
    measured scatter, none at 1 or 2 (the default 60 s window every 30 s), 1 at 5."""
    found = [
        seed
        for seed in range(40)
        if _first_change(_shared(1.2, 120, 0.10, 1000 * window + seed, window)) is not None
    ]
    assert len(found) <= allowed, found


def test_a_change_within_shared_noise_is_still_told() -> None:
    taus = _shared(1.2, 100, 0.03, 9, 2) + _shared(1.44, 12, 0.03, 72, 2)
    assert find_curve_change(_stay(8, taus)) == 3000.0


@pytest.mark.parametrize(
    ("taus", "changed_at"),
    [
        pytest.param(_noisy(1.2, 200, 0.03, 1), None, id="steady-3pct-noise"),
        pytest.param(_noisy(1.2, 400, 0.10, 2), None, id="steady-10pct-noise"),
        pytest.param([0.0] * 4 + _noisy(1.2, 40, 0.03, 3), None, id="restart-ramp-is-no-change"),
        pytest.param(_noisy(1.2, 100, 0.03, 4) + _noisy(1.56, 12, 0.03, 5), 3000.0,
                     id="slower-by-30pct"),
        pytest.param(_noisy(1.2, 100, 0.03, 6) + _noisy(0.9, 12, 0.03, 7), 3000.0,
                     id="faster-by-25pct"),
        # the median of the latest samples turns with the majority of them
        pytest.param(_noisy(1.2, 100, 0.03, 8) + _noisy(1.56, 7, 0.03, 9), 3000.0,
                     id="found-once-most-of-the-latest-are-new"),
        pytest.param(_noisy(1.2, 100, 0.03, 10) + _noisy(1.56, 5, 0.03, 11), None,
                     id="not-before-most-of-the-latest-are-new"),
        # 4 standard errors at 3 % noise are 5 %: told, but below CHANGE_FRACTION
        pytest.param(_noisy(1.2, 100, 0.03, 12) + _noisy(1.284, 12, 0.03, 13), None,
                     id="a-7pct-change-is-not-worth-forgetting"),
        # 4 standard errors of the medians' difference at 10 % noise: 17 %
        pytest.param(_noisy(1.2, 60, 0.10, 14) + _noisy(1.32, 12, 0.10, 15), None,
                     id="10pct-within-10pct-noise-is-not-told"),
        pytest.param(_noisy(1.2, 60, 0.10, 14) + _noisy(1.56, 12, 0.10, 15), 1800.0,
                     id="30pct-beyond-10pct-noise-is-told"),
        pytest.param(_noisy(1.2, 100, 0.03, 16) + [2.4] * 3 + _noisy(1.2, 20, 0.03, 17), None,
                     id="a-dip-is-no-change"),
    ],
)  # fmt: skip
def test_find_curve_change(taus: list[float], changed_at: float | None) -> None:
    assert find_curve_change(_stay(8, taus)) == changed_at


def _later(start: float, stay: list[Observation]) -> list[Observation]:
    return [replace(o, timestamp=start + o.timestamp) for o in stay]


def test_another_count_is_another_point_of_the_curve() -> None:
    obs = [
        *_stay(8, _noisy(1.2, 100, 0.03, 18)),
        *_later(3000.0, _stay(12, _noisy(1.6, 30, 0.03, 19))),
    ]
    assert find_curve_change(obs) is None


@pytest.mark.parametrize(("back", "changed"), [(1.2, False), (1.56, True)])
def test_coming_back_to_a_count_compares_with_what_it_measured_there(
    back: float, changed: bool
) -> None:
    """A curve that changed while the job moved shows when it comes back to a count."""
    obs = [
        *_stay(8, _noisy(1.2, 40, 0.03, 20)),
        *_later(1200.0, _stay(12, [0.0] * 3 + _noisy(1.6, 20, 0.03, 21))),
        *_later(1890.0, _stay(8, [0.0] * 3 + _noisy(back, 18, 0.03, 22))),
    ]
    # the first RAMP_TAIL_SAMPLES settled samples of a stay are not compared
    assert find_curve_change(obs) == (1890.0 + 30.0 * (3 + 6) if changed else None)


@pytest.mark.parametrize("objective", ["efficiency", "utilization"])
def test_a_job_whose_synchronisation_tripled_leaves_at_once(objective: str) -> None:
    """Settled near 22 (efficiency) or 10 (utilization) on amdahl(0.02), the job's curve
    becomes amdahl(0.06) at 2 h (another tenant on the links): where the new curve keeps the
    floor is at most 8 workers (efficiency 0.70) or 4 (utilization 0.80). Believing its old
    measurements it crept there one count at a time (efficiency: 25 minutes to notice, then
    6 rescales over 47 minutes); forgetting them, it goes there in one move."""
    kw = {"minEfficiency": 0.7} if objective == "efficiency" else {"targetGpuUtilization": 0.8}
    spec = make_spec(replicas=4, hi=32, objective=objective, **kw)
    new = amdahl(0.06)
    trace = simulate(spec, amdahl(0.02), hours=3.0, noise=0.03, seed=1, change=(CHANGE_AT, new))
    step = 30.0
    before = trace.replicas[int(CHANGE_AT / step)]
    after = trace.replicas[int(CHANGE_AT / step) :]
    best = max(n for n in range(1, 33) if (1 / new(n) if objective == "efficiency"
                                            else COMPUTE_FRACTION / new(n)) >= 0.7 + 0.1 * (objective != "efficiency"))  # fmt: skip
    assert before > best + 4, trace.replicas
    left = next(i for i, n in enumerate(after) if n != before)
    assert left * step <= 15 * 60, f"left {before} only {left * step / 60:.0f} min after the change"
    assert after[left] <= best + 1, after[left]  # one move to (about) the new best
    moves = sum(1 for a, b in itertools.pairwise(after) if a != b)
    assert moves <= 4, after
    told = [r for r in trace.recommendations if r.forgotten]
    assert told and all("the curve changed at" in r.reason for r in told)


def test_no_change_is_found_on_a_steady_curve() -> None:
    spec = make_spec(replicas=4, hi=32, objective="efficiency", minEfficiency=0.7)
    trace = simulate(spec, amdahl(0.02), hours=3.0, noise=0.05, seed=2)
    assert not any(r.forgotten or "the curve changed" in r.reason for r in trace.recommendations)

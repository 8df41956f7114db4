"""When the job's curve changed under it: measurements age.

Why this module exists: the policy believes what it measured, at every count, for as long
as the job runs. On a shared cluster the curve itself moves: another tenant's traffic on
the inter-node links, a slower storage tier behind the input pipeline, a node throttling.
The count the job runs at then measures differently from before, and every other count's
old measurements describe a curve that is gone. Believed, they make the job creep back
one count at a time, each step chosen on stale evidence and paying a restart (measured: a
job at 22 workers whose synchronisation tripled took 25 minutes to notice, then 6 rescales
over 47 minutes to reach 7). :func:`find_curve_change` tells a change of the curve from
noise on the current count's own samples, and :class:`~.autoscaler.JobAutoscaler` then
forgets everything measured before it and learns the new curve from the current count.

Pure, like the policy: observations in, a time (or None) out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from trainscale.operator.autoscaling.policy import (
    JUMP_SETTLED_SAMPLES,
    ModelSource,
    Observation,
    _analyse,
    _median,
    _metric,
    _noise_inflation,
    _relative_noise,
    _segments,
    _span,
)

CHANGE_SAMPLES = 2 * JUMP_SETTLED_SAMPLES
"""Settled samples, at the current count, that must agree on a new level (and as many
before them on the old one): a phase of a few minutes (an evaluation pass, a checkpoint
write) is not a new curve."""

RAMP_TAIL_SAMPLES = JUMP_SETTLED_SAMPLES
"""A stay's first settled samples left out of the comparison: a ``rate()`` window that
still holds part of the restart reads them low (the policy's settling accepts them at
``RECOVERED_FRACTION`` of the level, and a job back at a count would read "faster")."""

REFERENCE_SAMPLES = 3 * CHANGE_SAMPLES
"""Samples measured before the latest ones that they are compared with (the newest)."""

WINDOW_SAMPLES = CHANGE_SAMPLES + REFERENCE_SAMPLES
"""A stay's samples looked at, its latest (bounded work per decision, however long the
stay), and the samples read for where its restart ramp ended, its first."""

CHANGE_FRACTION = 0.1
"""Smallest relative change of the step time that counts as a new curve: below it the
stale measurements cost less than forgetting them would (re-exploring pays restarts)."""

CHANGE_Z = 4.0
"""Standard errors (of the two medians' difference, at the measured noise) the change must
exceed: checked every interval, a smaller margin would fire on noise within a day."""


NOISE_DOUBT = 2.3
"""Relative standard errors of a scatter measured from ``k`` independent samples, ``1.17 /
sqrt(k)`` for the median absolute deviation, times two: the noise a change is judged
against is ``(1 + NOISE_DOUBT / sqrt(k))`` times the scatter measured."""


def _steady(
    stay: Sequence[Observation], workers_per_node: int | None, *, limit: int | None = WINDOW_SAMPLES
) -> tuple[ModelSource | None, list[tuple[float, float]]]:
    """A stay's samples past its restart ramp, as ``(timestamp, step time)``: the metric's
    mode, and its latest ``limit`` (None: all) positive samples from the first settled one on.

    Where the ramp ended is read from the stay's beginning: the whole stay would read old
    samples as a ramp or a dip after a large change (its steady level is the median of its
    last third). From there every positive sample counts; the medians compared shrug off a
    dip's few samples.
    """
    # The ramp ends at the stay's last low sample in its first half, not at its first settled
    # run as for the fit: a change found is a job's curve forgotten, and a reference that
    # starts late costs only a little power (measured at 10 % noise, 5 scrapes a window: 2
    # of 40 steady hours "changed" from the first settled run on, 1 of 40 this way).
    head = _analyse(stay[:WINDOW_SAMPLES], None, math.inf, workers_per_node, settled_run=None)
    if head.mode is None:
        return None, []
    key = (stay[0].replicas, _span(stay[0], workers_per_node))
    settled = head.settled.get(key, [])
    if not settled:
        return head.mode, []
    # and not its first settled samples either: a throughput rate() over a window that
    # still holds part of the restart reads low for a while after the ramp
    start = settled[min(len(settled) - 1, RAMP_TAIL_SAMPLES)].timestamp
    samples: list[tuple[float, float]] = []
    for o in stay if limit is None else stay[-limit:]:
        v = _metric(o, head.mode)
        if o.timestamp >= start and v is not None and v > 0:
            samples.append((o.timestamp, 1.0 / v))
    return head.mode, samples


def _key(stay: Sequence[Observation], workers_per_node: int | None) -> tuple[int, int]:
    return stay[0].replicas, _span(stay[0], workers_per_node)


def _levels(
    stays: Sequence[Sequence[Observation]], mode: ModelSource, workers_per_node: int | None
) -> list[list[float]]:
    """The steady step times of each stay whose metric is ``mode``'s."""
    out = []
    for stay in stays:
        stay_mode, samples = _steady(stay, workers_per_node)
        if stay_mode is mode:
            out.append([tau for _, tau in samples])
    return out


def _judged_noise(levels: Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(noise, inflation)`` a change is judged against, from runs at one level each: the
    relative scatter at its upper bound (the scatter of a few samples is low by chance as
    often as high; ``NOISE_DOUBT``), and how many times the samples' autocorrelation
    inflates a median's variance (:func:`~.policy._noise_inflation`)."""
    inflation = _noise_inflation(levels)
    independent = max(1.0, sum(map(len, levels)) / inflation)
    scatter = _relative_noise({(1, i): list(run) for i, run in enumerate(levels) if run})
    return scatter * (1.0 + NOISE_DOUBT / math.sqrt(independent)), inflation


def find_curve_change(
    observations: Sequence[Observation], workers_per_node: int | None = None
) -> float | None:
    """The time the curve changed, if the current count's samples say it did.

    Compares the latest ``CHANGE_SAMPLES`` samples of the newest segment (the count the
    job runs at, since it last moved, past its restart ramp) with up to
    ``REFERENCE_SAMPLES`` measured before them at the same count and span: earlier in this
    stay, else in the latest earlier stays there (a curve that changed while the job moved
    shows when it comes back to a count it measured). Their step times' medians must differ
    by at least ``CHANGE_FRACTION`` and by ``CHANGE_Z`` standard errors at the measured
    noise. Returns the timestamp of the first of the latest samples that lies nearer the
    new level than the old one (measurements before it describe the old curve), or None.
    """
    obs = sorted(observations, key=lambda o: o.timestamp)
    if len(obs) < CHANGE_SAMPLES:
        return None
    segments = _segments(obs, None, workers_per_node)
    stay = segments[-1]
    if len(stay) < CHANGE_SAMPLES:
        return None
    key = _key(stay, workers_per_node)
    # all the stay's steady samples (for its noise), of which the latest WINDOW_SAMPLES
    # observations' are compared
    mode, stay_all = _steady(stay, workers_per_node, limit=None)
    since = stay[-min(len(stay), WINDOW_SAMPLES)].timestamp
    latest = [(t, tau) for t, tau in stay_all if t >= since]
    if mode is None or len(latest) < CHANGE_SAMPLES:
        return None
    window = latest[-CHANGE_SAMPLES:]
    runs = [[tau for _, tau in latest[:-CHANGE_SAMPLES]]]  # stays at this count, newest first
    for segment in reversed(segments[:-1]):
        if sum(map(len, runs)) >= REFERENCE_SAMPLES:
            break
        if _key(segment, workers_per_node) == key:
            runs += _levels([segment], mode, workers_per_node)
    reference = [tau for run in reversed(runs) for tau in run][-REFERENCE_SAMPLES:]
    if len(reference) < CHANGE_SAMPLES:
        return None
    old, new = _median(reference), _median([tau for _, tau in window])
    change = abs(math.log(new / old))
    # The noise, and how much neighbouring scrapes share it (rate() windows overlap), from
    # every stay of the job, each about its own level (the latest samples about theirs):
    # the few samples at one count can scatter little by chance, and checked every
    # interval for hours, such a chance fires.
    levels = [[tau for _, tau in stay_all[:-CHANGE_SAMPLES]], [tau for _, tau in window]]
    levels += runs[1:]
    others = [s for s in segments[:-1] if _key(s, workers_per_node) != key]
    levels += _levels(others, mode, workers_per_node)
    noise, inflation = _judged_noise(levels)
    # the variance of a median of k independent samples is about (pi / 2) sigma^2 / k
    error = noise * math.sqrt(1.5708 * inflation * (1.0 / len(reference) + 1.0 / len(window)))
    if change < CHANGE_FRACTION or change < CHANGE_Z * error:
        return None
    # The new level starts at the first of the latest samples nearer it than the old one.
    return next(
        (t for t, tau in window if abs(math.log(tau / new)) < abs(math.log(tau / old))),
        window[0][0],
    )


__all__ = [
    "CHANGE_FRACTION",
    "CHANGE_SAMPLES",
    "CHANGE_Z",
    "RAMP_TAIL_SAMPLES",
    "REFERENCE_SAMPLES",
    "WINDOW_SAMPLES",
    "find_curve_change",
]

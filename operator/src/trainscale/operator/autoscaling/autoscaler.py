"""One job's autoscaler: the memory the policy needs between passes, in one object.

Why this module exists: :func:`~trainscale.operator.autoscaling.policy.recommend` is pure and
takes everything it knows as arguments. Something has to keep those arguments between
passes -- the bounded observation history, the raw targets stabilization looks back on,
the learned restart cost, when the job last scaled, and which counts it was *forced* off
(unschedulable pods, a cluster ceiling) versus *chose* to leave -- and it must be the same
thing for the operator loop, the benchmarks and the simulator, or they drift apart.
:class:`JobAutoscaler` is that thing; still pure (no I/O, no clock: ``now`` is passed in).

Its compact state, :class:`AutoscalerMemory` (settled measurements per (count, nodes), the
restart cost, the forced and the chosen counts), is kept in the TrainingJob's status, so an
operator restart or a failover resumes without exploring again. Memory ages: when the count
the job runs at measures a changed curve (:mod:`~trainscale.operator.autoscaling.change`),
what was measured before the change is forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.autoscaling.change import find_curve_change
from trainscale.operator.autoscaling.placement import Placement, infer_workers_per_node
from trainscale.operator.autoscaling.policy import (
    RESTART_SAMPLES_KEPT,
    LimitedBy,
    Observation,
    Recommendation,
    _analyse,
    _Estimates,
    _median,
    _relative_noise,
    compact_observations,
    compute_payback_horizon,
    fit_speedup_model,
    recommend,
)

TARGETS_KEPT_SECONDS = 86400.0
"""Raw targets older than this are dropped (stabilization windows are minutes)."""

MAX_TARGETS_KEPT = 2000
"""At most this many raw targets are kept, whatever the interval."""

RESTORED_SAMPLES = 20
"""A remembered point is restored as at most this many samples (as compaction keeps)."""

_RESTORED_AGE_SECONDS = 7 * 86400.0  # restored samples sit this far before the first pass

RESTART_READ_SECONDS = 900.0
"""After a rescale the job asks for the trainer's measure of its restart
(:meth:`JobAutoscaler.restart_reading_since`) for at most this long: a trainer that exports
none, or pods that never all come up, are not asked about forever."""

UNSCHEDULABLE_RETRY_SECONDS = 300.0
"""After pods beyond a count were unschedulable (the job capped at the workers that ran), it
asks for no more than that for this long, then tries again. Without it, the job returned to
the count it was forced off at the next pass, found the pods unschedulable again, and went
up and down every pass on a full cluster (266 moves in 200 minutes). The wait ends early
when the cluster shows room it did not have at the failed try (``decide(room=...)``): a timer
alone returned 7.5 min after a 30-minute cap lifted (``benchmarks/forced.py --untold``). While
the room is known and has not grown, the timer's try is skipped and the wait renewed: the try
could place no more workers than the failed one, and from a count the job chose below the cap
it ran that count again for a while (two restarts a try)."""
UNSCHEDULABLE_RETRY_MAX_SECONDS = 3600.0
"""Each try that finds pods unschedulable again doubles the wait, up to this."""

UNSCHEDULABLE_GRACE_SECONDS = 30.0
"""Pods the scheduler rejected while the cluster shows free GPUs for all of them (``room``)
are left pending this long before they cap the job: GPUs freed between the scheduler's try
and the pass (another job's workers stopping, as arbitration moves GPUs between jobs) let
the scheduler place them at its next try. Capped at once, the job dropped the pod, and the
room it recorded at the failed try already held the GPU freed, so no room ever "appeared"
and it held one GPU short of its share, that GPU idle (the likely cause of a job seen once
on the test-bed holding 3 of its 4-GPU share, two jobs having arrived together on one
pool). Pods still unschedulable after this cap the job as before: something other than
GPUs keeps them off (CPU, memory, pod affinity)."""


@dataclass(frozen=True)
class RestartReading:
    """The trainer's own measure of the restart that followed a rescale, as Prometheus has
    it (``trainscale_trainer_resize_phase_seconds``, ``..._resize_steps_lost``, and
    ``..._resize_end_time_seconds`` to tell which restart the figures describe).

    Why the trainer's: the policy learns a restart's cost from the throughput it misses
    across the rescale, which takes samples every interval through it; the operator measures
    nothing while the new world forms and for ``settleSeconds`` after, so it rarely learned
    one and a job kept its spec's, its remembered cost or 60 s, however long its restarts
    took.

    Attributes:
        since: The rescale it was read for (the last scale time, the caller's epoch); only
            pods whose latest restart ended after it count.
        pods: Worker pods whose latest restart ended after ``since``.
        pause_seconds: Seconds training paused: each restart phase's slowest pod, summed
            (the old world's last step to the new world's first).
        retrained_seconds: Seconds of training done again (steps lost times the mean step;
            0 when no pod knows its steps lost).
    """

    since: float
    pods: int
    pause_seconds: float
    retrained_seconds: float = 0.0

    @property
    def cost_seconds(self) -> float:
        """The training time the restart cost."""
        return self.pause_seconds + self.retrained_seconds


@dataclass(frozen=True)
class MeasuredPoint:
    """One settled measurement: a count at a node span, and what it ran at.

    Attributes:
        replicas: Workers.
        nodes: Nodes they spanned.
        samples_per_second: Median job throughput of the settled samples, if exported.
        gpu_utilization: Median GPU utilization of the settled samples, if exported.
        samples: How many settled samples the medians are of.
        sync_fraction: Median share of the step time spent blocked on gradient
            synchronisation (0 <= x < 1) of the settled samples, if exported.
    """

    replicas: int
    nodes: int
    samples_per_second: float | None
    gpu_utilization: float | None
    samples: int
    sync_fraction: float | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


@dataclass(frozen=True)
class SchedulableCap:
    """What the cluster placed when the job asked for more: pods beyond ``replicas`` were
    unschedulable, so the job asks for no more before ``until``.

    Attributes:
        replicas: The workers that ran when the others were unschedulable.
        until: When the job may try more again (seconds, the caller's epoch).
        tries: Tries in a row that found pods beyond the cap unschedulable; the wait after
            the n-th is ``UNSCHEDULABLE_RETRY_SECONDS * 2 ** (n - 1)``, at most
            ``UNSCHEDULABLE_RETRY_MAX_SECONDS``.
        room: Workers of the job the cluster had free GPUs for when the try failed (None:
            not known). More room than that ends the wait at once.
    """

    replicas: int
    until: float
    tries: int
    room: int | None = None

    @classmethod
    def after(
        cls, replicas: int, now: float, earlier: SchedulableCap | None, room: int | None = None
    ) -> SchedulableCap:
        """The cap after a try at ``now`` found pods beyond ``replicas`` unschedulable, with
        ``room`` for that many workers (a try long after the last wait ended starts the count
        again)."""
        fresh = earlier is None or now > earlier.until + UNSCHEDULABLE_RETRY_MAX_SECONDS
        tries = 1 if fresh or earlier is None else earlier.tries + 1
        return cls(replicas, now, tries, room).renewed(now)

    def renewed(self, now: float) -> SchedulableCap:
        """The same cap, waiting from ``now`` as long as after its last failed try."""
        wait = UNSCHEDULABLE_RETRY_SECONDS * 2 ** (self.tries - 1)
        return replace(self, until=now + min(UNSCHEDULABLE_RETRY_MAX_SECONDS, wait))

    def room_appeared(self, running: int, room: int | None) -> bool:
        """Whether the cluster now holds more of the job's workers than at the failed try:
        ``running`` plus the free ``room`` beyond ``replicas`` plus the room the try found
        (both known). Room the try found and could not use (GPUs on nodes its pods may not
        run on) does not count, nor GPUs the job freed itself by moving down since."""
        if room is None or self.room is None:
            return False
        return running + room > self.replicas + self.room

    @classmethod
    def from_dict(cls, raw: Any) -> SchedulableCap | None:
        """Read :meth:`AutoscalerMemory.to_dict`'s entry back; None when absent or malformed."""
        if not isinstance(raw, Mapping):
            return None
        replicas, tries, until = (
            _count(raw.get("replicas")),
            _count(raw.get("tries")),
            _number(raw.get("until")),
        )
        if not replicas or not tries or until is None:
            return None
        return cls(replicas, until, tries, _count(raw.get("room")))


@dataclass(frozen=True)
class AutoscalerMemory:
    """The compact, JSON-able state kept in TrainingJob status (``status.autoscaling.memory``).

    Attributes:
        points: Settled measurements, one per (count, nodes).
        relative_noise: Relative noise of one settled sample, as measured.
        restart_cost_seconds: Restart cost learned from observed restarts, if any.
        last_scale_time: When ``spec.replicas`` last changed (seconds, the caller's epoch).
        forced_from: Counts the job was pushed off (it may return when the cap lifts).
        left_downwards: Counts the job chose to leave for fewer replicas.
        schedulable: The most workers that ran when pods beyond them were unschedulable,
            until when the job asks for no more, and how many tries in a row found them
            unschedulable (:data:`UNSCHEDULABLE_RETRY_SECONDS`); None when no try failed.
        running_since: When the autoscaler first decided for the job (seconds, the
            caller's epoch): how long the job has run sets the horizon a move's restart
            must pay back in (:func:`~.policy.compute_payback_horizon`).
    """

    points: tuple[MeasuredPoint, ...] = ()
    relative_noise: float | None = None
    restart_cost_seconds: float | None = None
    last_scale_time: float | None = None
    forced_from: tuple[int, ...] = ()
    left_downwards: tuple[int, ...] = ()
    schedulable: SchedulableCap | None = None
    running_since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """camelCase keys, JSON types only (what status stores)."""
        out: dict[str, Any] = {
            "points": [
                {
                    k: v
                    for k, v in (
                        ("replicas", p.replicas),
                        ("nodes", p.nodes),
                        ("samplesPerSecond", p.samples_per_second),
                        ("gpuUtilization", p.gpu_utilization),
                        ("samples", p.samples),
                        ("syncFraction", p.sync_fraction),
                    )
                    if v is not None
                }
                for p in self.points
            ],
            "forcedFrom": list(self.forced_from),
            "leftDownwards": list(self.left_downwards),
        }
        for key, value in (
            ("relativeNoise", self.relative_noise),
            ("restartCostSeconds", self.restart_cost_seconds),
            ("lastScaleTime", self.last_scale_time),
            ("runningSince", self.running_since),
        ):
            if value is not None:
                out[key] = value
        if self.schedulable is not None:
            cap = self.schedulable
            out["schedulable"] = {"replicas": cap.replicas, "until": cap.until, "tries": cap.tries}
            if cap.room is not None:
                out["schedulable"]["room"] = cap.room
        return out

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> AutoscalerMemory | None:
        """The memory a TrainingJob's status keeps (``status.autoscaling.memory``), read by
        :meth:`from_dict`; None when there is none."""
        raw = (status.get("autoscaling") or {}).get("memory")
        return cls.from_dict(raw) if isinstance(raw, Mapping) else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoscalerMemory:
        """Read :meth:`to_dict`'s output back; missing or malformed entries are skipped."""
        points: list[MeasuredPoint] = []
        for raw in data.get("points") or ():
            if not isinstance(raw, Mapping):
                continue
            replicas, nodes, samples = (
                _count(raw.get(k)) for k in ("replicas", "nodes", "samples")
            )
            x, u = _number(raw.get("samplesPerSecond")), _number(raw.get("gpuUtilization"))
            if not replicas or not nodes or not samples or (x is None and u is None):
                continue
            if (x is not None and x < 0) or (u is not None and not 0.0 <= u <= 1.0):
                continue
            s = _number(raw.get("syncFraction"))
            if s is not None and not 0.0 <= s < 1.0:
                s = None  # a malformed share is dropped, the measurement kept
            points.append(MeasuredPoint(replicas, nodes, x, u, samples, s))

        def counts(key: str) -> tuple[int, ...]:
            return tuple(sorted({c for c in data.get(key) or () if _count(c)}))

        noise = _number(data.get("relativeNoise"))
        cost = _number(data.get("restartCostSeconds"))
        return cls(
            points=tuple(points),
            relative_noise=noise if noise is not None and noise > 0 else None,
            restart_cost_seconds=cost if cost is not None and cost >= 0 else None,
            last_scale_time=_number(data.get("lastScaleTime")),
            forced_from=counts("forcedFrom"),
            left_downwards=counts("leftDownwards"),
            schedulable=SchedulableCap.from_dict(data.get("schedulable")),
            running_since=_number(data.get("runningSince")),
        )


def _restore(memory: AutoscalerMemory, before: float, interval: float) -> list[Observation]:
    """Remembered points as settled samples that end long ``before`` the first pass.

    Each point becomes up to ``RESTORED_SAMPLES`` samples alternating around its medians by
    the remembered noise (so the fit weighs it as it did), counts in ascending order (no
    count looks "left downwards"), segments an hour apart (no restart is learned from them).
    The sync share is a ratio, not a rate: every sample keeps the remembered median.
    """
    noise = (memory.relative_noise or 0.0) / 1.4826  # MAD of +-d is d; the fit scales by 1.4826
    out: list[Observation] = []
    t = before - _RESTORED_AGE_SECONDS
    for p in sorted(memory.points, key=lambda p: (p.replicas, p.nodes)):
        for i in range(max(3, min(p.samples, RESTORED_SAMPLES))):
            f = 1.0 + (noise if i % 2 else -noise)
            x = None if p.samples_per_second is None else p.samples_per_second * f
            u = None if p.gpu_utilization is None else min(1.0, p.gpu_utilization / f)
            out.append(Observation(t, p.replicas, u, x, p.nodes, p.sync_fraction))
            t += interval
        t += 3600.0
    return out


class JobAutoscaler:
    """Everything the operator keeps for one job between passes: bounded history of
    observations, raw targets for stabilization, learned restart cost, last scale time,
    counts the job was forced off vs chose to leave, how long it has run. One per job.

    Args:
        spec: The job's spec.
        memory: State kept in status by an earlier operator (restored on the first
            :meth:`decide`, before the observations it gets).
    """

    def __init__(self, spec: TrainingJobSpec, *, memory: AutoscalerMemory | None = None) -> None:
        self._spec = spec
        self._memory = memory
        self._observations: list[Observation] = []
        self._targets: list[tuple[float, int]] = []
        self._restart_cost = memory.restart_cost_seconds if memory else None
        self._restarts: list[float] = []  # restart costs the trainer measured, newest last
        self._restart_read_for: float | None = None  # the last scale time measured
        self._last_scale_time = memory.last_scale_time if memory else None
        self._forced: set[int] = set(memory.forced_from) if memory else set()
        self._left: set[int] = set(memory.left_downwards) if memory else set()
        self._schedulable: SchedulableCap | None = memory.schedulable if memory else None
        # the first decision's time (the memory's, across operator restarts): the job's age
        self._running_since = memory.running_since if memory else None
        self._probed: set[int] = set()  # counts moved to on a probe (not kept in status)
        self._rejected_since: float | None = None  # unschedulable pods with room seen since
        self._last_seen: dict[int, float] = {}  # count -> last time it was observed running
        self._current: int | None = None
        self._workers_per_node: int | None = None
        self._node_size: int | None = None  # workers per node told by the GPUs per node
        self._multi_node: Placement | None = None  # latest placement across several nodes
        self._estimates: tuple[int, _Estimates | None] | None = None

    def update_spec(self, spec: TrainingJobSpec) -> None:
        """The user edited the job: decide on the new spec from now on."""
        self._spec = spec

    def restart_reading_since(self, now: float) -> float | None:
        """The rescale whose restart the trainer's measure is wanted for (its time, to read
        the restart that ended after it), or None: none since the last one measured, or
        longer ago than :data:`RESTART_READ_SECONDS`."""
        since = self._last_scale_time
        if since is None or since == self._restart_read_for:
            return None
        return since if now - since <= RESTART_READ_SECONDS else None

    def take_restart(self, reading: RestartReading, *, running: int) -> bool:
        """Learn a restart's cost from the trainer's measure of it; True if it was taken.

        Taken once per rescale, and only when it is the restart after the rescale
        :meth:`restart_reading_since` asks about and every running worker finished it
        (``reading.pods`` >= ``running``): a pod whose first step at the new size has not
        come yet still serves an older restart, and the slowest pod sets the pause. The
        median of the last few taken is the restart cost decisions use where the
        observations teach none (see :func:`~.policy.recommend`) and the memory keeps.
        """
        if (
            running < 1
            or reading.since != self._last_scale_time
            or reading.since == self._restart_read_for
            or reading.pods < running
            or not (math.isfinite(reading.cost_seconds) and reading.cost_seconds >= 0)
        ):
            return False
        self._restarts = [*self._restarts[-(RESTART_SAMPLES_KEPT - 1) :], reading.cost_seconds]
        self._restart_read_for = reading.since
        return True

    def decide(
        self,
        observations: Sequence[Observation],
        *,
        current_replicas: int,
        now: float,
        placement: Placement | None = None,
        pending_replicas: int = 0,
        unschedulable_replicas: int = 0,
        ceiling: int | None = None,
        room: int | None = None,
    ) -> Recommendation:
        """Take the new observations, decide, and remember what the decision implies.

        Args:
            observations: NEW observations since the last call (often one).
            current_replicas: ``spec.replicas`` now.
            now: Seconds, the same epoch as ``Observation.timestamp``.
            placement: Where the running workers are now: fills ``nodes`` of new
                observations that lack it, and with ``gpus_per_node`` the node size.
            pending_replicas: Worker pods not running yet.
            unschedulable_replicas: Of those, pods the scheduler rejected.
            ceiling: Cluster arbitration's cap; None = no cap.
            room: Workers of this job the cluster has free GPUs for now, beyond those it
                runs (whole workers per node); None = not known. Read while pods are
                pending or the job waits after unschedulable pods (:attr:`waiting`): more
                room than the failed try found ends the wait at once, and room for every
                pod the scheduler rejected leaves them pending for
                :data:`UNSCHEDULABLE_GRACE_SECONDS` before they cap the job.

        Returns:
            The policy's :class:`Recommendation`. A returned count different from
            ``current_replicas`` is taken as applied (the last scale time is now).
        """
        spec = self._spec
        if self._running_since is None:
            self._running_since = now
        if self._memory is not None:
            interval = float(spec.autoscaling.interval_seconds)
            self._observations = _restore(self._memory, now, interval)
            self._last_seen.update({p.replicas: now for p in self._memory.points})
            self._memory = None
        self._workers_per_node = self._placed_per_node(placement)
        new = [
            replace(o, nodes=placement.nodes)
            if placement is not None and o.nodes is None and o.replicas == placement.replicas
            else o
            for o in observations
        ]
        if self._current is not None and current_replicas != self._current:
            self._last_scale_time = now  # someone (a user, the scale subresource) moved it
        self._observations = compact_observations([*self._observations, *new], now)
        self._forget_stale_counts(new, current_replicas, now)
        changed = self._forget_changed_curve(current_replicas, now)
        self._estimates = None
        running = current_replicas - pending_replicas
        graced = self._scheduler_grace(unschedulable_replicas, room, now)
        if graced:
            unschedulable_replicas = 0  # pending, not rejected, for the grace period
        room_appeared = self._update_wait(current_replicas, running, room, now)
        cap = self._schedulable
        waiting = None if cap is None or now >= cap.until else cap.replicas
        measured = _median(self._restarts) if self._restarts else None
        rec = recommend(
            spec,
            self._observations,
            current_replicas,
            now,
            pending_replicas=pending_replicas,
            unschedulable_replicas=unschedulable_replicas,
            last_scale_time=self._last_scale_time,
            restart_cost_seconds=self._restart_cost,
            measured_restart_cost_seconds=measured,
            recent_targets=self._targets,
            forced_from=sorted(self._forced),
            workers_per_node=self._workers_per_node,
            ceiling=ceiling,
            left_downwards=sorted(self._left),
            probed=sorted(self._probed),
            max_schedulable_replicas=waiting,
            horizon_seconds=compute_payback_horizon(now - self._running_since),
        )
        self._targets = [(t, n) for t, n in self._targets if t >= now - TARGETS_KEPT_SECONDS]
        self._targets = [*self._targets[-(MAX_TARGETS_KEPT - 1) :], (now, rec.target)]
        known = [c for c in (rec.learned_restart_cost_seconds, measured) if c is not None]
        if known:  # what the job's own restarts cost (as decisions take it: the larger)
            self._restart_cost = max(known)
        if room_appeared and rec.replicas > current_replicas:
            assert cap is not None
            rec = replace(
                rec,
                reason=f"{rec.reason} (the cluster has room for {room} more than the "
                f"{running} running, {cap.room} more than {cap.replicas} when pods beyond "
                "were unschedulable)",
            )
        if graced:
            rec = replace(
                rec,
                reason=f"{rec.reason} ({graced} pods unschedulable, but the cluster has free "
                f"GPUs for {room}: leaving them to the scheduler for up to "
                f"{UNSCHEDULABLE_GRACE_SECONDS:.0f} s)",
            )
        self._remember_move(rec, current_replicas, now, room)
        rec = self._say_when_it_tries_again(rec, now)
        if changed:
            rec = replace(
                rec,
                reason=f"{rec.reason} (the curve changed at {current_replicas} replicas: "
                f"{changed} earlier measurements forgotten)",
                forgotten=changed,
            )
        return rec

    def _placed_per_node(self, placement: Placement | None) -> int | None:
        """Workers a node takes for the placements the model predicts
        (:func:`infer_workers_per_node`): the node size where the GPUs per node are told, less
        where the job's latest multi-node placement filled its nodes less (other pods hold
        part of them), inferred from placements where nothing is told.

        Without it a count measured across nodes was judged as if on one node, its
        inter-node cost fitted and then left out of its own estimate: with the node size not
        told, cliff-8 under the efficiency floor held 32 GPUs reading 0.87 (truly 0.50); with
        6 of each 8-GPU node free, 8 workers ran 6 + 2 and were held as one node's, 12 of 18
        cases breaking their constraint."""
        spec = self._spec
        if placement is not None and placement.gpus_per_node and spec.gpus_per_replica:
            self._node_size = max(1, placement.gpus_per_node // spec.gpus_per_replica)
        if placement is not None and placement.nodes > 1:
            self._multi_node = placement
        return infer_workers_per_node(
            self._node_size,
            self._multi_node,
            [(o.replicas, o.nodes) for o in self._observations if o.nodes],
        )

    def _forget_changed_curve(self, current: int, now: float) -> int:
        """When the current count's samples show a new curve (:func:`find_curve_change`),
        forget everything measured before the change, and the counts left or probed on that
        evidence: the job learns the new curve from the current count. The learned restart
        cost and the counts it was forced off (the cluster's, not the curve's) are kept.
        Returns how many observations were forgotten."""
        changed = find_curve_change(self._observations, self._workers_per_node)
        if changed is None:
            return 0
        kept = [o for o in self._observations if o.timestamp >= changed]
        forgotten = len(self._observations) - len(kept)
        self._observations = kept
        self._left.clear()
        self._probed.clear()
        self._targets = []
        self._last_seen = {current: now}
        return forgotten

    def _forget_stale_counts(self, new: Sequence[Observation], current: int, now: float) -> None:
        """``forgetAfterSeconds``: drop what was measured at counts above the current one
        that the job has not run at for that long, and that it left them, so the policy
        explores them again (a curve that recovered pays there again). Counts below are kept:
        they are the efficiency reference, and without them a job at its best count would go
        down to re-measure them and come back, once per ``forgetAfterSeconds``; if the curve
        changed where the job runs, :meth:`_forget_changed_curve` forgets them too.
        Restored memory counts as seen at its restore."""
        for o in new:
            self._last_seen[o.replicas] = max(
                self._last_seen.get(o.replicas, o.timestamp), o.timestamp
            )
        self._last_seen[current] = now
        forget = self._spec.autoscaling.forget_after_seconds
        if forget is None:
            return
        stale = {c for c, seen in self._last_seen.items() if c > current and now - seen > forget}
        if not stale:
            return
        self._observations = [o for o in self._observations if o.replicas not in stale]
        self._left -= stale
        self._probed -= stale
        for count in stale:
            del self._last_seen[count]

    def _scheduler_grace(self, unschedulable: int, room: int | None, now: float) -> int:
        """Unschedulable pods left pending at this pass (:data:`UNSCHEDULABLE_GRACE_SECONDS`):
        all of them when the cluster shows free GPUs for all of them and the grace, counted
        from the first pass that saw them so, has not run out; else 0."""
        if unschedulable <= 0:
            self._rejected_since = None
            return 0
        if room is None or room < unschedulable:
            return 0
        if self._rejected_since is None:
            self._rejected_since = now
        return unschedulable if now - self._rejected_since < UNSCHEDULABLE_GRACE_SECONDS else 0

    def _update_wait(self, current: int, running: int, room: int | None, now: float) -> bool:
        """The wait after unschedulable pods, at this pass: over when pods beyond it ran,
        ended early when the cluster holds more of the job than at the failed try, renewed
        when it is due while the room is known and no larger (a try could place no more than
        the failed one did). Returns whether more room appeared."""
        cap = self._schedulable
        if cap is None:
            return False
        if current > cap.replicas and current == running:
            self._schedulable = None  # pods beyond the cap ran: the cluster has room
            return False
        appeared = cap.room_appeared(running, room)
        if appeared and now < cap.until:
            self._schedulable = replace(cap, until=now)  # a failed try still doubles
        elif not appeared and now >= cap.until and room is not None and cap.room is not None:
            self._schedulable = cap.renewed(now)
        return appeared

    @property
    def waiting(self) -> bool:
        """Whether pods beyond a count were unschedulable and no try since ran them: the
        caller should pass ``decide(room=...)`` (it ends the wait once the cluster frees
        GPUs)."""
        return self._schedulable is not None

    def _remember_move(
        self, rec: Recommendation, current: int, now: float, room: int | None = None
    ) -> None:
        """Forced versus chosen: a cap by pods or a ceiling is not the job's choice."""
        self._current = rec.replicas
        if rec.replicas == current:
            return
        self._last_scale_time = now
        if rec.probing:
            self._probed.add(rec.replicas)
        if rec.replicas > current:
            self._forced = {c for c in self._forced if c > rec.replicas}
            return
        if rec.forced and rec.limited_by in (LimitedBy.UNSCHEDULABLE, LimitedBy.CEILING):
            self._forced.add(current)
            if rec.limited_by is LimitedBy.UNSCHEDULABLE:
                self._schedulable = SchedulableCap.after(rec.replicas, now, self._schedulable, room)
        elif not rec.forced:
            self._left.add(current)
            self._forced.discard(current)

    def _say_when_it_tries_again(self, rec: Recommendation, now: float) -> Recommendation:
        """A count held under the cap of pods found unschedulable says when it tries more."""
        cap = self._schedulable
        if cap is None or rec.limited_by is not LimitedBy.UNSCHEDULABLE or now >= cap.until:
            return rec
        tried = "once" if cap.tries == 1 else f"{cap.tries} times in a row"
        return replace(
            rec,
            reason=f"{rec.reason}; pods beyond {cap.replicas} were unschedulable ({tried}), "
            f"asking for more again in {math.ceil((cap.until - now) / 60)} min",
        )

    def _current_estimates(self) -> _Estimates | None:
        key = len(self._observations)
        if self._estimates is not None and self._estimates[0] == key:
            return self._estimates[1]
        analysis = _analyse(self._observations, None, math.inf, self._workers_per_node)
        est: _Estimates | None = None
        if analysis.mode is not None:
            model = fit_speedup_model(
                analysis.points, analysis.compute, analysis.mode, self._workers_per_node
            )
            if model is not None:
                est = _Estimates(
                    model,
                    analysis.points,
                    self._spec.max_replicas,
                    analysis.unsynced,
                    analysis.busy,
                    analysis.synced,
                )
        self._estimates = (key, est)
        return est

    def predict_throughput(self, replicas: int, *, nodes: int | None = None) -> float | None:
        """The fitted model's throughput at ``replicas`` spanning ``nodes`` (None: packed).

        Samples/s when the job exports throughput, relative units (``n * U``) otherwise;
        None before anything is measured. At the packed placement, measured counts weigh
        in as the decisions see them; at another span it is the model's prediction.
        """
        if replicas <= 0:
            return 0.0
        est = self._current_estimates()
        if est is None:
            return None
        if nodes is None or nodes == est.model.nodes(replicas):
            return est.throughput(replicas)
        return est.model.throughput(replicas, nodes)

    def memory(self) -> AutoscalerMemory:
        """Compact state for status: settled points per (count, nodes), restart cost, counts."""
        analysis = _analyse(self._observations, None, math.inf, self._workers_per_node)
        points: list[MeasuredPoint] = []
        for (n, nodes), settled in sorted(analysis.settled.items()):
            if not settled:
                continue
            xs = [o.samples_per_second for o in settled if o.samples_per_second is not None]
            us = [o.gpu_utilization for o in settled if o.gpu_utilization is not None]
            ss = [o.sync_fraction for o in settled if o.sync_fraction is not None]
            sync: float | None = None
            if ss:
                median = _median(ss)
                sync = rounded if (rounded := round(median, 6)) < 1.0 else median  # stays < 1
            points.append(
                MeasuredPoint(
                    n,
                    nodes,
                    round(_median(xs), 6) if xs else None,
                    round(_median(us), 6) if us else None,
                    len(settled),
                    sync,
                )
            )
        return AutoscalerMemory(
            points=tuple(points),
            relative_noise=round(_relative_noise(analysis.points), 6) if analysis.points else None,
            restart_cost_seconds=self._restart_cost,
            last_scale_time=self._last_scale_time,
            forced_from=tuple(sorted(self._forced)),
            left_downwards=tuple(sorted(self._left)),
            schedulable=self._schedulable,
            running_since=self._running_since,
        )


__all__ = ["AutoscalerMemory", "JobAutoscaler", "MeasuredPoint", "SchedulableCap"]

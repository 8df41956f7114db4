"""``trainscale simulate``: what the autoscaler would do to a job, before it is enabled.

Why this module exists: a platform engineer wants to see the autoscaler's decisions on a
speedup curve (a named family or one measured on their cluster) before handing it a real
job. This runs :func:`trainscale.operator.autoscaling.simulation.run_simulation` (the same
code the benchmark uses) and turns its result into readable lines, a summary against the
best static count, and optionally a PNG (matplotlib, imported only when a plot is asked
for; install the ``simulate`` extra).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from trainscale.operator.api import TrainingJobSpec
from trainscale.operator.autoscaling.simulation import (
    Ceiling,
    Curve,
    CurveChange,
    CurveError,
    FragmentedCurve,
    Noise,
    Restarts,
    Segment,
    SimulationResult,
    edge_count,
    fragmentable,
    load_curve,
    parse_warmup,
    run_simulation,
)


class SimulateError(Exception):
    """A flag or a curve that cannot be simulated; the message names it."""


@dataclass(frozen=True)
class SimulateOptions:
    """The flags of ``trainscale simulate``."""

    curve: str
    objective: str = "efficiency"
    min_efficiency: float | None = None
    max_cost_per_hour: float | None = None
    cost_per_gpu_hour: float | None = None
    target_gpu_utilization: float | None = None
    min_replicas: int = 1
    max_replicas: int = 32
    start: int = 4
    gpus_per_node: int | None = None
    free_per_node: int | None = None  # other pods hold the rest of each node's GPUs
    hours: float = 4.0
    interval: int = 30
    noise: float = 0.05
    missing_scrapes: float = 0.0
    restart_seconds: float = 60.0
    restart_spread: float = 0.0  # each restart's cost scattered log-normally about it
    restart_new_nodes: float = 0.0  # more for a move onto nodes never spanned before
    restart_new_nodes_each: bool = False  # that much per new node: pulls sharing one link
    warmup: str | None = None  # SECONDS:SHARE, a slow start after each restart
    rate_window: float = 60.0
    seed: int = 0
    allowed_replicas: str | None = None
    plot: str | None = None
    change_at: float | None = None
    change_curve: str | None = None
    ceiling: Sequence[str] = ()  # --ceiling, once per cap
    told_length: bool = False  # the job says the samples it has left
    operator_timing: bool = False  # measured as the autoscale daemon does (see --operator-timing)


# API field (camelCase, as pydantic reports it) -> the flag that sets it
_FLAGS = {
    "replicas": "--start",
    "minReplicas": "--min-replicas",
    "maxReplicas": "--max-replicas",
    "objective": "--objective",
    "minEfficiency": "--min-efficiency",
    "maxCostPerHour": "--max-cost-per-hour",
    "costPerGpuHour": "--cost-per-gpu-hour",
    "targetGpuUtilization": "--target-gpu-utilization",
    "intervalSeconds": "--interval",
    "allowedReplicas": "--allowed-replicas",
}


def parse_allowed_replicas(text: str) -> dict[str, Any]:
    """``--allowed-replicas`` as ``spec.allowedReplicas``: ``multipleOf=N``, ``powersOfTwo``
    or a comma-separated list of counts; several forms joined with ``+`` must all hold.

    Raises:
        SimulateError: naming the flag and the part it cannot read.
    """
    allowed: dict[str, Any] = {}
    for part in (p.strip() for p in text.split("+")):
        if part == "powersOfTwo":
            allowed["powersOfTwo"] = True
            continue
        key, _, value = part.partition("=")
        try:
            if key == "multipleOf" and value:
                allowed["multipleOf"] = int(value)
            elif not value and part:
                allowed["values"] = [int(v) for v in part.split(",")]
            else:
                raise ValueError(part)
        except ValueError:
            raise SimulateError(
                f"--allowed-replicas: cannot read {part!r} (multipleOf=N, powersOfTwo, or "
                "counts like 4,8,16; join forms with +)"
            ) from None
    return allowed


def build_spec(options: SimulateOptions) -> TrainingJobSpec:
    """The TrainingJob spec the flags describe (one GPU per worker).

    Raises:
        SimulateError: naming the flag of the first invalid value.
    """
    auto: dict[str, Any] = {
        "enabled": True,
        "objective": options.objective,
        "intervalSeconds": options.interval,
    }
    for key, value in (
        ("minEfficiency", options.min_efficiency),
        ("maxCostPerHour", options.max_cost_per_hour),
        ("costPerGpuHour", options.cost_per_gpu_hour),
        ("targetGpuUtilization", options.target_gpu_utilization),
    ):
        if value is not None:
            auto[key] = value
    if options.objective == "budget" and options.max_cost_per_hour is None:
        raise SimulateError("--objective budget needs --max-cost-per-hour")
    body = {
        "replicas": options.start,
        "minReplicas": options.min_replicas,
        "maxReplicas": options.max_replicas,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "image": "simulated",
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ]
            }
        },
        "autoscaling": auto,
    }
    if options.allowed_replicas is not None:
        body["allowedReplicas"] = parse_allowed_replicas(options.allowed_replicas)
    try:
        return TrainingJobSpec.model_validate(body)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = next((str(p) for p in reversed(error["loc"]) if str(p) in _FLAGS), None)
        message = str(error["msg"]).removeprefix("Value error, ")
        if field is not None:
            raise SimulateError(f"{_FLAGS[field]}: {message}") from None
        names = re.compile(r"\b(" + "|".join(_FLAGS) + r")\b")
        raise SimulateError(names.sub(lambda m: _FLAGS[m.group(1)], message)) from None


def check_options(options: SimulateOptions) -> None:
    """Flags the spec does not validate.

    Raises:
        SimulateError: naming the flag.
    """
    if not options.hours > 0:
        raise SimulateError(f"--hours must be > 0, got {options.hours:g}")
    if not 0 <= options.noise < 1:
        raise SimulateError(f"--noise must be within [0, 1), got {options.noise:g}")
    if not 0 <= options.missing_scrapes < 1:
        raise SimulateError(
            f"--missing-scrapes must be within [0, 1), got {options.missing_scrapes:g}"
        )
    if options.restart_seconds < 0:
        raise SimulateError(f"--restart-seconds must be >= 0, got {options.restart_seconds:g}")
    if options.rate_window < 0:
        raise SimulateError(f"--rate-window must be >= 0, got {options.rate_window:g}")
    if options.gpus_per_node is not None and options.gpus_per_node < 1:
        raise SimulateError(f"--gpus-per-node must be >= 1, got {options.gpus_per_node}")
    if options.free_per_node is not None and options.free_per_node < 1:
        raise SimulateError(f"--free-per-node must be >= 1, got {options.free_per_node}")
    _check_change_and_ceiling(options)


def _check_change_and_ceiling(options: SimulateOptions) -> None:
    """``--change-at``/``--change-curve`` and ``--ceiling``: each within the run, one at a
    time."""
    if (options.change_at is None) != (options.change_curve is None):
        raise SimulateError("--change-at and --change-curve go together")
    if options.change_at is not None and not 0 < options.change_at < options.hours:
        raise SimulateError(
            f"--change-at must be within the run (0, {options.hours:g}) hours, "
            f"got {options.change_at:g}"
        )
    caps = _ceilings(options)
    if caps and options.change_at is not None:
        raise SimulateError("--ceiling and --change-at: one at a time")
    for text, cap in zip(options.ceiling, caps, strict=True):
        if not 0 < cap.at_seconds < cap.lifts_at < options.hours * 3600:
            raise SimulateError(
                f"--ceiling {text!r}: it must start and lift within the run "
                f"(0, {options.hours:g}) hours"
            )
        if cap.replicas < options.min_replicas:
            raise SimulateError(
                f"--ceiling {text!r}: {cap.replicas} replicas is under "
                f"--min-replicas {options.min_replicas}"
            )
    ordered = sorted(zip(caps, options.ceiling, strict=True), key=lambda pair: pair[0].at_seconds)
    for (cap, text), (later, later_text) in itertools.pairwise(ordered):
        if later.at_seconds < cap.lifts_at:
            raise SimulateError(
                f"--ceiling {later_text!r} starts before --ceiling {text!r} lifts: "
                "ceilings must not overlap"
            )


def clock(seconds: float) -> str:
    """``h:mm:ss``."""
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def decision_lines(result: SimulationResult) -> Iterator[str]:
    """Every decision: moves, wanted moves and curve changes one per line, runs of plain
    holds collapsed."""
    held: list[tuple[float, str, int]] = []

    def flush() -> Iterator[str]:
        if held:
            (first, _, n), (last, reason, _) = held[0], held[-1]
            span = clock(first) if first == last else f"{clock(first)}-{clock(last)}"
            times = "1 decision" if len(held) == 1 else f"{len(held)} decisions"
            yield f"{span:>17}  hold {n:>3}        ({times}) {reason}"
            held.clear()

    for d in result.decisions:
        rec = d.recommendation
        plain = rec.target == rec.current_replicas and not rec.forgotten
        if rec.replicas == rec.current_replicas and plain:
            held.append((d.time, rec.reason, rec.current_replicas))
            continue
        yield from flush()
        move = f"{rec.current_replicas:>3} -> {rec.replicas:<3}"
        wants = "" if rec.target == rec.replicas else f" (target {rec.target})"
        yield f"{clock(d.time):>17}  {move:<15}{rec.reason}{wants}"
    yield from flush()


def summary_lines(result: SimulationResult) -> Iterator[str]:
    """Samples against the best static count, rescales, and the constraint."""
    best, score = result.hindsight, result.score
    c = score.constraint
    start = result.scored_from
    reference = best.samples_per_second * (result.hours * 3600 - start)
    if result.changed_at is not None:
        yield f"after the change at {clock(start)}: against the new curve"
    elif result.ceilings:
        last = "the last ceiling lifts" if len(result.ceilings) > 1 else "the ceiling lifts"
        yield f"after {last} at {clock(start)}"
    yield (
        f"best static count (hindsight): {best.replicas} "
        f"({c.name} {best.constrained_value:.2f}, {best.samples_per_second:.1f} samples/s)"
        + ("" if best.feasible else f"; no allowed count keeps {c.name} {c.limit:g}")
    )
    yield (
        f"samples: {score.raw_samples_ratio:.3f} of the best static count "
        f"({score.raw_samples_ratio * reference:.4g} vs {reference:.4g})"
    )
    settled = f", the last at {clock(score.settled_at)}" if score.rescales else ""
    yield f"rescales: {score.rescales}{settled}; final count {result.final_replicas}"
    relation = "<=" if c.ceiling else ">="
    over = (
        "after the change"
        if result.changed_at is not None
        else "after the lift"
        if result.ceilings
        else "over the run"
    )
    verdict = "kept" if score.constraint_met else "BROKEN (the run scores 0)"
    yield (
        f"constraint: {c.name} averaged {over} {score.constraint_value:.3f}, "
        f"needs {relation} {c.limit:g}: {verdict}"
    )
    yield f"score: {score.samples_ratio:.3f}; GPU hours {result.gpu_hours:.1f}"
    need = result.scrapes_to_resolve
    if need > 0:
        count, value = edge_count(best, c)
        above = value >= c.limit
        side, other = ("above", "below") if above else ("below", "above")
        scrapes = len(result.decisions)
        verdict = (
            "a knife edge: which side the run lands on is the noise's doing"
            if need > scrapes
            else "enough to resolve it"
        )
        yield (
            f"margin: {c.name} at {count} is {result.margin:.2%} {side} {c.limit:g}; at "
            f"{result.noise.relative:.0%} noise per scrape, telling it from a count as far "
            f"{other} takes {_count(need)} there; this run has {scrapes} in all ({verdict})"
        )


def _count(value: float) -> str:
    if math.isinf(value):
        return "infinitely many"
    n = math.ceil(value)
    return f"{n:,} scrape" + ("" if n == 1 else "s")


def load_pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend.

    Raises:
        SimulateError: when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SimulateError("--plot needs matplotlib: pip install 'trainscale[simulate]'") from None
    return plt


def _plot_scored_after(result: SimulationResult) -> str:
    """The plot title's note of what the score starts after: a curve change, or ceilings."""
    if result.changed_at is not None:
        return f", the curve changed at {result.changed_at / 3600:g} h (scored after it)"
    if len(result.ceilings) == 1:
        cap = result.ceilings[0]
        return (
            f", a ceiling of {cap.replicas} from {cap.at_seconds / 3600:g} to "
            f"{cap.lifts_at / 3600:g} h (scored after it)"
        )
    if result.ceilings:
        return f", {len(result.ceilings)} ceilings (scored after the last)"
    return ""


def write_plot(result: SimulationResult, path: str) -> None:
    """Replicas, throughput and efficiency (or GPU utilization) over time, as a PNG.

    Raises:
        SimulateError: when matplotlib is missing.
    """
    plt = load_pyplot()
    best, score = result.hindsight, result.score
    c = score.constraint
    utilization = c.name == "GPU utilization"

    def steps(value: Callable[[Segment], float]) -> tuple[list[float], list[float]]:
        xs: list[float] = []
        ys: list[float] = []
        for seg in result.segments:
            xs += [seg.start / 3600, seg.end / 3600]
            ys += [value(seg)] * 2
        return xs, ys

    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(10, 8), constrained_layout=True)
    changed = _plot_scored_after(result)
    if result.changed_at is not None:
        for ax in axes:
            ax.axvline(result.changed_at / 3600, color="tab:gray", ls="-.", lw=1)
    for i, cap in enumerate(result.ceilings):
        axes[0].fill_between(
            [cap.at_seconds / 3600, cap.lifts_at / 3600],
            cap.replicas,
            result.spec.max_replicas,
            color="tab:gray",
            alpha=0.2,
            label="ceiling" if i == 0 else None,
        )
    fig.suptitle(
        f"trainscale simulate: {result.curve}, objective "
        f"{result.spec.autoscaling.objective.value}, {result.hours:g} h{changed}\n"
        f"samples {score.raw_samples_ratio:.3f} of the best static count, "
        f"{score.rescales} rescales, {c.name} {score.constraint_value:.2f} "
        f"({'kept' if score.constraint_met else 'BROKEN: scores 0'})",
        fontsize=11,
    )
    ax = axes[0]
    ax.plot(*steps(lambda s: s.replicas), color="tab:blue", label="replicas")
    ax.axhline(best.replicas, color="tab:green", ls="--", label=f"best static ({best.replicas})")
    top = max([s.replicas for s in result.segments] + [best.replicas])
    ax.set_ylabel("replicas")
    ax.set_ylim(0, top * 1.15 + 1)
    ax.legend(loc="lower right")
    ax = axes[1]
    ax.plot(*steps(lambda s: s.samples_per_second), color="tab:blue", lw=1, label="throughput")
    ax.axhline(best.samples_per_second, color="tab:green", ls="--", label="best static")
    ax.set_ylabel("samples/s (true)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax = axes[2]

    def metric(seg: Segment) -> float:
        if seg.restarting:
            return math.nan
        return seg.gpu_utilization if utilization else seg.efficiency

    ax.plot(*steps(metric), color="tab:blue", lw=1.5, label=c.name, zorder=3)
    ax.axhline(
        best.constrained_value,
        color="tab:green",
        ls="--",
        label=f"best static ({best.constrained_value:.2f})",
    )
    if not c.ceiling:
        ax.axhline(c.limit, color="tab:red", ls=":", lw=2, label=f"floor {c.limit:g}")
    ax.set_ylabel("GPU utilization" if utilization else "scaling efficiency")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("hours")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def restarts_from(options: SimulateOptions) -> Restarts:
    """The run's :class:`Restarts` from ``--restart-seconds``, ``--restart-spread``,
    ``--restart-new-nodes`` (``--restart-new-nodes-each``) and ``--warmup``.

    Raises:
        SimulateError: naming the flag.
    """
    for flag, value in (("--restart-spread", options.restart_spread),
                        ("--restart-new-nodes", options.restart_new_nodes)):  # fmt: skip
        if not (math.isfinite(value) and value >= 0):
            raise SimulateError(f"{flag} must be >= 0, got {value:g}")
    if options.restart_new_nodes_each and not options.restart_new_nodes:
        raise SimulateError("--restart-new-nodes-each needs --restart-new-nodes SECONDS > 0")
    warmup = (0.0, 1.0)
    if options.warmup is not None:
        try:
            warmup = parse_warmup(options.warmup)
        except ValueError as exc:
            raise SimulateError(f"--warmup {options.warmup!r}: {exc}") from None
    return Restarts(options.restart_seconds, options.restart_spread, options.restart_new_nodes,
                    *warmup, new_nodes_each=options.restart_new_nodes_each)  # fmt: skip


def run_simulate(options: SimulateOptions, out: Any) -> int:
    """Run the simulation the flags describe, print it to ``out``, write the plot.

    Raises:
        SimulateError: on a bad flag or curve, naming it.
    """
    check_options(options)
    restarts = restarts_from(options)
    varies = ", ".join(restarts.variations())
    spec = build_spec(options)
    try:
        curve = _partly_free(
            load_curve(options.curve, gpus_per_node=options.gpus_per_node), options
        )
        change = _change(options)
        ceilings = _ceilings(options)
        result = run_simulation(
            curve,
            spec,
            hours=options.hours,
            noise=Noise(options.noise, options.missing_scrapes),
            restart_seconds=restarts,
            rate_window=options.rate_window,
            seed=options.seed,
            change=change,
            ceiling=ceilings,
            report_time_left=options.told_length,
            await_world=options.operator_timing,
            report_restarts=options.operator_timing,
        )
    except CurveError as exc:
        hint = ""
        if "no point at or around" in str(exc):
            hint = "; add points, or keep --min-replicas/--max-replicas to the counts it covers"
        raise SimulateError(f"--curve: {exc}{hint}") from None
    auto = spec.autoscaling
    where = f"{curve.gpus_per_node}-GPU nodes" if curve.gpus_per_node else "one node"
    if isinstance(curve, FragmentedCurve):
        where += f", {curve.free_per_node} GPUs of each free for the job"
    print(
        f"# {result.curve} ({where}), objective {auto.objective.value}, start {spec.replicas} "
        f"in [{spec.min_replicas}, {spec.max_replicas}], {options.hours:g} h, interval "
        f"{auto.interval_seconds} s, noise {options.noise:.0%}, restart "
        f"{options.restart_seconds:g} s{f' ({varies})' if varies else ''}, rate window "
        f"{options.rate_window:g} s, seed "
        f"{options.seed}"
        + ("; the job says the time it has left" if options.told_length else "")
        + (
            "; the operator's timing (measured once the new world formed and settleSeconds "
            "after it; the trainer's restart measure)"
            if options.operator_timing
            else ""
        )
        + (
            ""
            if change is None
            else f"; at {clock(change.at_seconds)} the curve becomes {change.curve.name} "
            "(scored after that)"
        )
        + "".join(
            f"; a cluster ceiling of {cap.replicas} from {clock(cap.at_seconds)} "
            f"to {clock(cap.lifts_at)}"
            + ("" if cap.told else " (not told: unschedulable pods and free GPUs)")
            for cap in result.ceilings
        )
        + (
            ""
            if not result.ceilings
            else " (scored after it lifts)"
            if len(result.ceilings) == 1
            else " (scored after the last lifts)"
        ),
        file=out,
    )
    print(f"{'time':>17}  {'decision':<15}reason", file=out)
    for line in decision_lines(result):
        print(line, file=out)
    for line in summary_lines(result):
        print(f"# {line}", file=out)
    if options.plot:
        write_plot(result, options.plot)
        print(f"# plot written to {options.plot}", file=out)
    return 0


UNTOLD = "untold"
"""``--ceiling HOURS:MINUTES:REPLICAS:untold``: the job is not told the cap (no arbitration);
it sees only unschedulable pods and the free GPUs."""


def _ceilings(options: SimulateOptions) -> tuple[Ceiling, ...]:
    """Each ``--ceiling HOURS:MINUTES:REPLICAS[:untold]`` as one of the simulator's ceilings,
    in the order given."""
    return tuple(_ceiling(text) for text in options.ceiling)


def _ceiling(text: str) -> Ceiling:
    """``--ceiling HOURS:MINUTES:REPLICAS[:untold]`` as a simulator ceiling."""
    parts = text.split(":")
    told = not (len(parts) == 4 and parts[3] == UNTOLD)
    try:
        at, minutes, replicas = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != (3 if told else 4) or not (math.isfinite(at) and math.isfinite(minutes)):
            raise ValueError
    except (ValueError, IndexError):
        raise SimulateError(
            f"--ceiling {text!r}: expected HOURS:MINUTES:REPLICAS[:{UNTOLD}], e.g. 1.5:30:2"
        ) from None
    if minutes <= 0 or replicas < 1:
        raise SimulateError(f"--ceiling {text!r}: the minutes must be > 0 and the replicas >= 1")
    return Ceiling(at * 3600.0, minutes * 60.0, replicas, told)


def _change(options: SimulateOptions) -> CurveChange | None:
    """``--change-at`` / ``--change-curve`` as the simulator's curve change."""
    if options.change_curve is None or options.change_at is None:
        return None
    try:
        later = load_curve(options.change_curve, gpus_per_node=options.gpus_per_node)
    except CurveError as exc:
        raise SimulateError(f"--change-curve: {exc}") from None
    return CurveChange(options.change_at * 3600.0, _partly_free(later, options))


def _partly_free(curve: Curve, options: SimulateOptions) -> Curve:
    """``--free-per-node``: the curve on nodes whose other GPUs other pods hold
    (:class:`FragmentedCurve`: the job's workers fill what is free before the next node)."""
    free = options.free_per_node
    if free is None:
        return curve
    size = curve.gpus_per_node
    if size is None or not fragmentable(curve):
        raise SimulateError(
            f"--free-per-node: {curve.name} has no placement but its packed one (a named "
            "curve with a node size, such as cliff-8 or recover-4, has)"
        )
    if free >= size:
        raise SimulateError(f"--free-per-node must be under the node size {size}, got {free}")
    return FragmentedCurve(curve, free)


def options_from(values: Mapping[str, Any]) -> SimulateOptions:
    """:class:`SimulateOptions` from parsed flags (argparse's ``vars``)."""
    names = SimulateOptions.__dataclass_fields__
    return SimulateOptions(**{k: v for k, v in values.items() if k in names})

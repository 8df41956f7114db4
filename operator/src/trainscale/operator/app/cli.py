"""The ``trainscale`` command line: one console script, one subcommand per job.

Why this module exists: users meet the operator through it (``trainscale operator``,
``trainscale crd``, ``trainscale simulate``); it parses flags and hands over to the module that does the work, so
each subcommand's heavy imports happen only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Mapping, Sequence

from trainscale.operator.adapters.prometheus_access import (
    PrometheusAccess,
    PrometheusAccessError,
    parse_header,
)
from trainscale.operator.daemons.options import (
    DEFAULT_PROMETHEUS_URL,
    LOG_FORMATS,
    LOG_LEVELS,
    OperatorOptions,
)

# --prometheus-* access flags: (flag, env variable read when the flag is not given, help).
_PROMETHEUS_ACCESS_FLAGS = (
    ("bearer-token-file", "a file holding the bearer token sent to Prometheus, re-read at "
     "every query (e.g. a projected service-account token, which the kubelet rotates)"),
    ("username", "basic-auth user name (with --prometheus-password-file)"),
    ("password-file", "a file holding the basic-auth password, re-read at every query"),
    ("ca-file", "PEM bundle of the CAs that sign Prometheus' certificate (instead of the "
     "system's)"),
    ("cert-file", "client certificate (PEM) for mutual TLS"),
    ("key-file", "key (PEM) of the client certificate"),
)  # fmt: skip
_TRUE = ("1", "true", "yes", "on")


def _env_name(flag: str) -> str:
    return "TRAINSCALE_PROMETHEUS_" + flag.upper().replace("-", "_")


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every --help shows each option's default, except where there is none to show (None,
    and on/off flags, whose help says what they change)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
        ):
            return text
        return f"{text} (default: %(default)s)"


_FORMATTER = _DefaultsHelpFormatter


def _write(text: str, output: str | None) -> int:
    """Print ``text``, or write it to ``output`` (``-`` also means standard output)."""
    if output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


def _cmd_crd(args: argparse.Namespace) -> int:
    from trainscale.operator.api.crd import render_crd_yaml

    return _write(render_crd_yaml(), args.output)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from trainscale.operator.observability.dashboard import render_dashboard_json

    return _write(render_dashboard_json(), args.output)


def _cmd_operator(args: argparse.Namespace) -> int:
    from trainscale.operator.app.main import run_operator

    return run_operator(operator_options(args, os.environ))


def operator_options(args: argparse.Namespace, env: Mapping[str, str]) -> OperatorOptions:
    """The ``trainscale operator`` flags as the operator's options; exits with a message
    naming the flag when they cannot run."""
    if not args.all_namespaces and not args.namespace:
        raise SystemExit("trainscale operator: give --all-namespaces or at least one --namespace")
    access = build_prometheus_access(args, env)
    return OperatorOptions(
        namespaces=tuple(args.namespace or ()),
        all_namespaces=args.all_namespaces,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        liveness_port=args.liveness_port,
        liveness_address=args.liveness_address,
        prometheus_url=args.prometheus_url,
        prometheus_access=access,
        peering=args.peering,
        priority=args.priority,
        peering_lifetime=args.peering_lifetime,
        log_level=args.log_level,
        log_format=args.log_format,
        arbitration=args.arbitration,
        arbitration_interval_seconds=args.arbitration_interval,
        arbitration_preempt_to_grow=args.arbitration_preemption == "grow",
    )


def build_prometheus_access(args: argparse.Namespace, env: Mapping[str, str]) -> PrometheusAccess:
    """The operator's Prometheus access from the --prometheus-* flags, each falling back to
    its TRAINSCALE_PROMETHEUS_* environment variable; exits with a message naming the flag
    when they contradict each other or a file is missing."""
    given: dict[str, str | None] = {}
    for flag, _ in _PROMETHEUS_ACCESS_FLAGS:
        attr = "prometheus_" + flag.replace("-", "_")
        given[flag] = getattr(args, attr) or env.get(_env_name(flag)) or None
    insecure = args.prometheus_insecure_skip_verify or (
        env.get(_env_name("insecure-skip-verify"), "").strip().lower() in _TRUE
    )
    try:
        headers = tuple(parse_header(h) for h in args.prometheus_header or ())
        access = PrometheusAccess(
            bearer_token_file=given["bearer-token-file"],
            username=given["username"],
            password_file=given["password-file"],
            ca_file=given["ca-file"],
            cert_file=given["cert-file"],
            key_file=given["key-file"],
            insecure_skip_verify=insecure,
            headers=headers,
        )
    except PrometheusAccessError as exc:
        raise SystemExit(f"trainscale operator: --prometheus-*: {exc}") from None
    for what, path in access.files:
        if not os.path.isfile(path):
            raise SystemExit(f"trainscale operator: the Prometheus {what} {path} does not exist")
    return access


def _add_prometheus_access(op: argparse.ArgumentParser) -> None:
    group = op.add_argument_group(
        "Prometheus access",
        "How the operator authenticates to Prometheus (like KEDA's Prometheus scaler). Secrets "
        "only from files; every flag falls back to the environment variable it names. "
        "Credentials, client certificate and headers are sent only to --prometheus-url, never "
        "to a URL a job names.",
    )
    for flag, text in _PROMETHEUS_ACCESS_FLAGS:
        group.add_argument(
            f"--prometheus-{flag}", metavar="FILE" if flag.endswith("file") else "NAME",
            help=f"{text} (env {_env_name(flag)})",
        )  # fmt: skip
    group.add_argument(
        "--prometheus-insecure-skip-verify",
        action="store_true",
        help="do not verify Prometheus' TLS certificate (logs a warning; give --prometheus-ca-file "
        f"instead) (env {_env_name('insecure-skip-verify')}=true)",
    )
    group.add_argument(
        "--prometheus-header",
        action="append",
        metavar="NAME=VALUE",
        help="extra header of every query, e.g. X-Scope-OrgID=team-a for multi-tenant Mimir "
        "(repeatable)",
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.workload is not None:
        return _cmd_simulate_workload(args)
    from trainscale.operator.app.simulate import SimulateError, options_from, run_simulate

    workload_flags = (
        "nodes", "jobs", "policies", "pools", "restricted", "cpu_per_node", "cpu_heavy", "urgent",
        "low", "placed", "apart",
    )  # fmt: skip
    for flag in workload_flags:
        if getattr(args, flag) not in (None, False):
            name = flag.replace("_", "-")
            sys.stderr.write(f"trainscale simulate: error: --{name} needs --workload\n")
            return 2
    values = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return run_simulate(options_from(values), sys.stdout)
    except SimulateError as exc:
        sys.stderr.write(f"trainscale simulate: error: {exc}\n")
        return 2


def _cmd_simulate_workload(args: argparse.Namespace) -> int:
    from trainscale.operator.app.simulate import SimulateError
    from trainscale.operator.app.simulate_workload import (
        DEFAULT_POLICIES,
        WorkloadOptions,
        run_workload,
    )

    for flag in ("allowed_replicas", "change_at", "change_curve", "ceiling", "free_per_node",
                 "told_length", "restart_spread", "restart_new_nodes",
                 "restart_new_nodes_each", "warmup",
                 "operator_timing"):  # fmt: skip
        value = getattr(args, flag)
        if value is not None and value is not False and value != []:  # set (0 is set)
            # a trace's jobs each have their own bounds and curves; the flag describes one job
            name = flag.replace("_", "-")
            sys.stderr.write(f"trainscale simulate: error: --{name} needs --curve\n")
            return 2
    options = WorkloadOptions(
        workload=args.workload,
        nodes=args.nodes if args.nodes is not None else 16,
        gpus_per_node=args.gpus_per_node if args.gpus_per_node is not None else 4,
        jobs=args.jobs if args.jobs is not None else 160,
        hours=args.hours if args.hours is not None else 8.0,
        interval=args.interval if args.interval is not None else 60,
        seed=args.seed if args.seed is not None else 1,
        policies=tuple(args.policies or DEFAULT_POLICIES),
        plot=args.plot,
        pools=args.pools if args.pools is not None else 1,
        restricted=args.restricted if args.restricted is not None else 0.0,
        cpu_per_node=args.cpu_per_node if args.cpu_per_node is not None else 0,
        cpu_heavy=args.cpu_heavy if args.cpu_heavy is not None else 0.0,
        urgent=args.urgent if args.urgent is not None else 0.0,
        low=args.low if args.low is not None else 0.0,
        placed=args.placed,
        apart=args.apart if args.apart is not None else 0.0,
    )
    try:
        return run_workload(options, sys.stdout)
    except SimulateError as exc:
        sys.stderr.write(f"trainscale simulate: error: {exc}\n")
        return 2


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = sub.add_parser(
        "simulate",
        formatter_class=_FORMATTER,
        help="replay the autoscaler on a speedup curve, or arbitration on a workload",
        description=(
            "With --curve: simulate a training job on a speedup curve (a named family or a "
            "CSV of measured points: count,nodes,samples_per_second,gpu_utilization) under "
            "the autoscaler, print every decision with its reason and a summary against the "
            "best static count chosen with hindsight, and optionally plot it. With "
            "--workload: replay many jobs sharing a cluster under fixed sizes, per-job "
            "autoscaling and trainscale's arbitration, print their completion times and each "
            "job's allocations, and optionally plot the GPUs each job holds over time."
        ),
    )
    what = sim.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--workload",
        metavar="FILE.csv|generated",
        help=(
            "a trace (columns arrival_seconds,total_samples,curve,min_replicas,max_replicas,"
            "requested_replicas[,priority,restart_seconds,name]; curve is serial:cliff[:rate] "
            "or a curve CSV count,nodes,samples_per_second,gpu_utilization, relative to the "
            "trace) "
            "or 'generated' (--jobs over --hours)"
        ),
    )
    what.add_argument(
        "--curve",
        metavar="NAME|FILE.csv",
        help=(
            "linear, amdahl, comm-peak, log-sync, two-tier, cliff-4, cliff-8, recover-4, "
            "recover-8, strong-8, weak-8, overlap-amdahl, overlap-peak, overlap-buckets, "
            "overlap-recover-8, overlap-strong-8, or a CSV file"
        ),
    )
    sim.add_argument(
        "--objective",
        choices=["efficiency", "budget", "utilization"],
        default="efficiency",
        help="what the autoscaler optimises",
    )
    sim.add_argument("--min-efficiency", type=float, help="efficiency floor (default 0.7)")
    sim.add_argument("--max-cost-per-hour", type=float, help="budget (objective budget)")
    sim.add_argument("--cost-per-gpu-hour", type=float, help="price of a GPU hour (default 1)")
    sim.add_argument("--target-gpu-utilization", type=float, help="utilization floor (default 0.8)")
    sim.add_argument("--min-replicas", type=int, default=1, help="fewest workers")
    sim.add_argument("--max-replicas", type=int, default=32, help="most workers")
    sim.add_argument("--start", type=int, default=4, help="replicas at the start")
    sim.add_argument(
        "--allowed-replicas",
        metavar="FORM",
        help="the counts the job may run at (spec.allowedReplicas): multipleOf=N, powersOfTwo, "
        "or counts like 4,8,16; forms joined with + must all hold (--curve)",
    )
    sim.add_argument(
        "--gpus-per-node",
        type=int,
        help="node size for the packed placement (default: the curve's own; 4 for --workload)",
    )
    sim.add_argument(
        "--free-per-node",
        type=int,
        metavar="GPUS",
        help="other pods hold the rest of each node: the job's workers fill GPUS of a node "
        "before the next, so the boundary comes sooner than the node size says (--curve, a "
        "named curve with a node size)",
    )
    sim.add_argument(
        "--hours",
        type=float,
        help="length of the run (--curve, default 4); arrival window (generated, default 8)",
    )
    sim.add_argument(
        "--interval",
        type=int,
        help="seconds between decisions (default 30 for --curve, 60 for --workload)",
    )
    sim.add_argument("--noise", type=float, default=0.05, help="relative noise per observation")
    sim.add_argument(
        "--missing-scrapes", type=float, default=0.0, help="fraction of scrapes that return nothing"
    )
    sim.add_argument(
        "--restart-seconds", type=float, default=60.0, help="training lost per rescale"
    )
    sim.add_argument(
        "--restart-spread",
        type=float,
        help="each restart's cost scattered log-normally about --restart-seconds (the "
        "standard deviation of its logarithm; 0.5: one in twenty under 0.33x or over 2.2x)",
    )
    sim.add_argument(
        "--restart-new-nodes",
        type=float,
        metavar="SECONDS",
        help="a move onto nodes the job has never spanned costs SECONDS more (its image "
        "pulled there)",
    )
    sim.add_argument(
        "--restart-new-nodes-each",
        action="store_true",
        help="--restart-new-nodes is paid per new node: the pulls share one link (a "
        "registry's bandwidth, a NAT gateway), so four new nodes take four times one",
    )
    sim.add_argument(
        "--warmup",
        metavar="SECONDS:SHARE",
        help="after each restart the job trains SECONDS at SHARE of its rate (a recompile, "
        "autotuning, a cold data cache), e.g. 180:0.5",
    )
    sim.add_argument(
        "--rate-window", type=float, default=60.0, help="seconds of the throughput rate()"
    )
    sim.add_argument(
        "--seed", type=int, help="seed of the noise (default 0) or of the workload (default 1)"
    )
    sim.add_argument("--nodes", type=int, help="nodes of the cluster (--workload; default 16)")
    sim.add_argument("--jobs", type=int, help="jobs to generate (--workload; default 160)")
    sim.add_argument(
        "--pools",
        type=int,
        help="node pools the nodes split into, in order (--workload; default 1): a trace's "
        "pool column holds a job to one of them (0 to POOLS-1)",
    )
    sim.add_argument(
        "--restricted",
        type=float,
        metavar="SHARE",
        help="share of the generated jobs held to one pool, drawn per job (--workload "
        "generated, with --pools)",
    )
    sim.add_argument(
        "--cpu-per-node",
        type=int,
        metavar="CPUS",
        help="CPUs per node, which each worker's CPUs must fit beside its GPU (--workload; a "
        "trace's cpu_per_worker column, else --cpu-heavy)",
    )
    sim.add_argument(
        "--cpu-heavy",
        type=float,
        metavar="SHARE",
        help="share of the generated jobs whose workers ask half a node's CPUs, drawn per job; "
        "the others ask half a GPU's share (--workload generated, with --cpu-per-node)",
    )
    sim.add_argument(
        "--urgent",
        type=float,
        metavar="SHARE",
        help="share of the generated jobs given a higher priority, drawn per job; their "
        "PriorityClass preempts under every policy (--workload generated; a trace has a "
        "priority column)",
    )
    sim.add_argument(
        "--low",
        type=float,
        metavar="SHARE",
        help="share of the other generated jobs given a lower priority (batch work), drawn "
        "per job; with --urgent, three priorities (--workload generated)",
    )
    sim.add_argument(
        "--placed",
        action="store_true",
        help="each job's throughput is that of the nodes its workers span (its curve's "
        "node-boundary cliff once they span two), not its count packed (--workload; a "
        "measured curve has packed rows only)",
    )
    sim.add_argument(
        "--apart",
        type=float,
        metavar="SHARE",
        help="share of the generated jobs whose workers may not share a node (a required pod "
        "anti-affinity to their own workers), drawn per job (--workload generated; a trace "
        "has an apart column)",
    )
    sim.add_argument(
        "--policies",
        nargs="+",
        metavar="POLICY",
        help="fixed, per-job, per-job-oracle, hpa, trainscale (--workload; default: fixed "
        "per-job trainscale)",
    )
    sim.add_argument(
        "--change-at",
        type=float,
        metavar="HOURS",
        help="the curve changes this many hours into the run (--curve, with --change-curve): "
        "see how the autoscaler re-learns; the run is then scored after the change",
    )
    sim.add_argument(
        "--change-curve",
        metavar="NAME|FILE.csv",
        help="what the curve becomes at --change-at (a named family or a CSV, as --curve)",
    )
    sim.add_argument(
        "--ceiling",
        metavar="HOURS:MINUTES:REPLICAS[:untold]",
        action="append",
        help="a cluster ceiling of REPLICAS from HOURS into the run for MINUTES (--curve): "
        "another job took the GPUs; see the job go back once it lifts (scored after that); "
        "repeat it for caps that come and go (scored after the last); ':untold': without "
        "arbitration, the job sees only unschedulable pods and the free GPUs",
    )
    sim.add_argument(
        "--told-length",
        action="store_true",
        help="the job says how many samples it has left, as the trainer's remaining-samples "
        "gauge does (--curve): a move's restart must pay back within the time it has left, "
        "not within its age",
    )
    sim.add_argument(
        "--operator-timing",
        action="store_true",
        help="measure as the operator's autoscale daemon does (--curve): after a rescale "
        "nothing until the workers report their new world (at most 120 s) and settleSeconds "
        "after it, and the restart cost the trainer measures (default: settleSeconds after "
        "the count changed, the restart cost learned from the samples)",
    )
    sim.add_argument("--plot", metavar="OUT.png", help="write a PNG (needs matplotlib)")
    sim.set_defaults(func=_cmd_simulate)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``trainscale`` command."""
    parser = argparse.ArgumentParser(
        prog="trainscale",
        description="Kubernetes-native autoscaler for elastic data-parallel PyTorch training.",
        formatter_class=_FORMATTER,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {importlib.metadata.version('trainscale')}",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = sub.add_parser(
        "crd",
        help="print (or write) the TrainingJob CRD generated from the API models",
        formatter_class=_FORMATTER,
    )
    crd.add_argument("-o", "--output", help="file to write instead of standard output")
    crd.set_defaults(func=_cmd_crd)

    dash = sub.add_parser(
        "dashboard", help="print (or write) the Grafana dashboard JSON", formatter_class=_FORMATTER
    )
    dash.add_argument("-o", "--output", help="file to write instead of standard output")
    dash.set_defaults(func=_cmd_dashboard)

    op = sub.add_parser(
        "operator",
        help="run the operator (kopf) against the current cluster",
        formatter_class=_FORMATTER,
    )
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="watch this namespace (repeatable; globs allowed)",
    )
    op.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics (0: off)")
    op.add_argument("--metrics-address", default="0.0.0.0", help="address /metrics binds to")
    op.add_argument("--liveness-port", type=int, default=8081, help="port of /healthz (0: off)")
    op.add_argument("--liveness-address", default="0.0.0.0", help="address /healthz binds to")
    op.add_argument(
        "--prometheus-url",
        default=DEFAULT_PROMETHEUS_URL,
        help="Prometheus used by jobs whose spec names none",
    )
    _add_prometheus_access(op)
    op.add_argument(
        "--peering",
        metavar="NAME",
        help="run as one of several replicas: only the highest-priority one acts (kopf peering)",
    )
    op.add_argument("--priority", type=int, help="peering priority (default: random)")
    op.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        metavar="SECONDS",
        help="a peer silent this long is presumed dead and another replica takes over",
    )
    op.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="least severity logged",
    )
    op.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line (kopf's JSON logging, for log collectors)",
    )
    op.add_argument(
        "--no-arbitration",
        dest="arbitration",
        action="store_false",
        help="let every autoscaled job grow on its own instead of dividing the cluster's GPUs "
        "between them (cluster arbitration is on by default)",
    )
    op.add_argument(
        "--arbitration-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often cluster arbitration re-divides the GPUs",
    )
    op.add_argument(
        "--arbitration-preemption",
        choices=("grow", "start"),
        default="grow",
        help="a job whose PriorityClass preempts (the Kubernetes default) queues running jobs "
        "of lower priority to start and, with 'grow' (the default, as its pods would), to grow "
        "beyond its minReplicas too; with 'start', only to start",
    )
    op.set_defaults(func=_cmd_operator)

    _add_simulate(sub)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainscale`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

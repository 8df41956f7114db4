"""The elastic agent of one node (pod): torchrun's agent, tuned for fast resizes.

Why this module exists: plain ``torchrun`` works (``torchrun -m trainscale.trainer --task``),
but two things make every resize slow on it. (1) A node that is told to leave (SIGTERM from
the kubelet) stays a rendezvous participant until its heartbeats expire, so the survivors
wait ``keep_alive_interval x keep_alive_max_attempt`` before they can form the smaller world.
Our agent removes itself from the rendezvous the moment it is signalled. (2) Every restart
re-imports torch in fresh worker processes (seconds on a small CPU). Our agent starts workers
from a ``forkserver`` that has torch, the runtime and the task's module preloaded, started
while the first rendezvous is still in progress. And one thing makes it unsafe: a node its
peers declared dead while it still trains (late heartbeats) is never told; our agent
notices and re-joins (:func:`rejoin_when_dropped`).

The agent reads its configuration exactly like torchrun: from ``PET_*`` environment
variables (``PET_NNODES``, ``PET_RDZV_ENDPOINT``, ``PET_RDZV_CONF``, ...), which is how the
operator configures worker pods.

It also serves the pod's one metrics endpoint (``TRAINSCALE_METRICS_PORT``, the port the pod
declares): its workers, one per local rank, publish their values into a directory the agent
creates, and the agent sums them (see :mod:`trainscale.trainer.runtime.metrics`). The agent
outlives every restart of its workers, so the pod's counters never reset on a resize.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.distributed.elastic.agent.server.api import WorkerSpec
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import registry as rdzv_registry
from torch.distributed.launcher.api import LaunchConfig

from trainscale.trainer.contract.environment import ENV_FAST_RESIZE
from trainscale.trainer.launch.preload import preload_forkserver, wait_for_forkserver
from trainscale.trainer.launch.worker_entry import worker_main
from trainscale.trainer.runtime.elastic import FATAL_EXIT_CODE, RESTART_EXIT_CODE
from trainscale.trainer.runtime.metrics import serve_pod_metrics, stop_server
from trainscale.trainer.runtime.phases import note_rendezvous
from trainscale.trainer.runtime.settings import (
    MetricsSettings,
    SettingsError,
    metrics_settings_from_env,
)

logger = logging.getLogger(__name__)

START_METHODS = ("forkserver", "spawn")
RENDEZVOUS_POLL_SECONDS = 0.1


def leave_rendezvous(handler: Any) -> bool:
    """Remove this node from the rendezvous now instead of letting its heartbeat expire.

    Uses the dynamic rendezvous handler's own exit operation (what it runs before every
    re-join). It is private API of torch 2.13, so any failure just falls back to the
    heartbeat expiry and returns False.
    """
    try:
        from torch.distributed.elastic.rendezvous.dynamic_rendezvous import _RendezvousExitOp

        handler._stop_heartbeats()
        with handler._heartbeat_lock:
            handler._op_executor.run(_RendezvousExitOp(), time.monotonic() + 10.0)
        logger.info("left the rendezvous")
        return True
    except Exception as exc:
        logger.warning("could not leave the rendezvous early (%s); peers wait for expiry", exc)
        return False


def rejoin_when_dropped(handler: Any) -> bool:
    """Make this node re-join when its peers have declared it dead while it still trains.

    A node whose rendezvous heartbeats stall for ``keep_alive_interval x
    keep_alive_max_attempt`` (a CPU-throttled pod, a GC pause, a loaded machine) is removed
    from the participants by the next node that syncs the state. If that node is a new one
    joining, it starts a new round with itself as its only participant, the old world's
    wait list stays empty, and torch's agent, which only restarts its workers when a node
    is *waiting*, never does: the job trains on in the old world and the new pod waits
    until the job ends (seen once in the elastic test: worlds 2 and "3" apart for the whole
    run). Wrapped here, ``num_nodes_waiting`` also counts this node itself once it is no
    longer a participant of the open round, so the agent restarts its workers and joins
    the new round, as for any scale-up. Private API of torch 2.13: on any mismatch this
    changes nothing and returns False.
    """
    try:
        original = handler.num_nodes_waiting
        holder, node = handler._state_holder, handler._this_node
    except AttributeError as exc:
        logger.warning("could not watch for a dropped rendezvous membership (%s)", exc)
        return False
    if getattr(original, "_trainscale_rejoin", False):
        return True

    def num_nodes_waiting() -> int:
        waiting = int(original())  # syncs the state (and drops nodes whose heartbeats expired)
        state = holder.state
        if state.closed or node in state.participants:
            return waiting
        logger.warning(
            "this node was dropped from the rendezvous (its heartbeats were late); re-joining"
        )
        return max(waiting, 1)

    num_nodes_waiting._trainscale_rejoin = True  # type: ignore[attr-defined]
    handler.num_nodes_waiting = num_nodes_waiting
    return True


def tune_rendezvous_polling(handler: Any, poll: float) -> bool:
    """Make a waiting node poll the rendezvous state every ``poll`` seconds, not every 1 s.

    torch's dynamic rendezvous sleeps a hard-coded second between polls and caches the
    state for a second, so each join takes 2-3 s beyond the last-call timeout. Polling a
    TCPStore 10 times a second per waiting node is cheap at our scale (tens of nodes).
    Private API of torch 2.13: on any mismatch this changes nothing and returns False.
    """
    try:
        from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

        original = getattr(dr, "_delay")  # noqa: B009 - private, may vanish
        if not getattr(original, "_trainscale_tuned", False):

            def _delay(seconds: float | tuple[float, float]) -> None:
                original(poll if seconds == 1 else seconds)

            _delay._trainscale_tuned = True  # type: ignore[attr-defined]
            setattr(dr, "_delay", _delay)  # noqa: B010
        handler._state_holder._cache_duration = poll
        return True
    except Exception as exc:
        logger.warning("could not tune rendezvous polling (%s); using torch's 1 s", exc)
        return False


def use_plain_torch_log_format() -> None:
    """Give torch's log handlers a plain formatter.

    torch's own formatter imports ``torch._dynamo`` the first time it formats an exception;
    that happens when a worker fails (every scale-down) and costs seconds of import time
    exactly when the job is waiting to re-rendezvous.
    """
    plain = logging.Formatter(
        "%(levelname).1s%(asctime)s %(process)d %(name)s:%(lineno)d] %(message)s", "%m%d %H:%M:%S"
    )
    for name in ("torch", "torch.distributed", ""):
        for handler in logging.getLogger(name).handlers:
            if type(handler.formatter).__module__.startswith("torch."):
                handler.setFormatter(plain)


class _ExpectedRestartFilter(logging.Filter):
    """Drop torch's traceback for workers that exit with RESTART_EXIT_CODE.

    That exit is the normal end of a worker whose peer left (a scale-down), not a failure;
    a one-line notice replaces the traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if f"(exitcode: {RESTART_EXIT_CODE})" in record.getMessage():
            logger.warning("a peer left the job; re-forming the world without it")
            return False
        return True


class TrainscaleAgent(LocalElasticAgent):
    """torchrun's local agent that leaves the rendezvous as soon as it is told to stop."""

    fast_leave = True
    metrics_dir = ""  # where the workers publish; the agent notes each rendezvous there

    def _rendezvous(self, worker_group: Any) -> None:
        # The workers' resize phases (runtime/phases.py) start from this rendezvous.
        started = time.time()
        super()._rendezvous(worker_group)
        note_rendezvous(self.metrics_dir, started, time.time())

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
        # SimpleElasticAgent.run() calls _shutdown() while handling the SignalException raised
        # by torchrun's SIGTERM/SIGINT handler: that is a node leaving, not a restart.
        if self.fast_leave and isinstance(sys.exception(), SignalException):
            leave_rendezvous(self._worker_group.spec.rdzv_handler)
        super()._shutdown(death_sig, timeout)

    def _monitor_workers(self, worker_group: Any) -> Any:
        # A worker that exits with FATAL_EXIT_CODE has a configuration error: restarting it
        # would only repeat the error max_restarts times, so give up at once.
        result = super()._monitor_workers(worker_group)
        if any(f.exitcode == FATAL_EXIT_CODE for f in result.failures.values()):
            self._remaining_restarts = 0
        return result


@contextlib.contextmanager
def pod_metrics(settings: MetricsSettings, worker_argv: Sequence[str]) -> Iterator[str]:
    """Serve the pod's metrics endpoint for as long as the agent runs.

    Yields the directory the workers publish into ("" when metrics are off: port 0 or
    ``--no-metrics``). The directory is created fresh for each agent (a restarted container
    starts its counters from zero, which ``rate()`` treats as a reset) and removed at the end.
    """
    if settings.port is None or "--no-metrics" in worker_argv:
        yield ""
        return
    directory = Path(tempfile.mkdtemp(prefix="trainscale-metrics-"))
    server = None
    try:
        _, server = serve_pod_metrics(settings, settings.port, directory)
        yield str(directory)
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(directory, ignore_errors=True)


def build_launch_config(start_method: str) -> LaunchConfig:
    """Parse torchrun's options from the ``PET_*`` environment, exactly as torchrun does.

    Raises:
        ValueError: for an unknown start method.
    """
    from torch.distributed.run import config_from_args, get_args_parser

    if start_method not in START_METHODS:
        raise ValueError(f"--start-method must be one of {START_METHODS}, got {start_method!r}")
    args = get_args_parser().parse_args(["trainscale-worker"])
    config, _, _ = config_from_args(args)
    config.start_method = start_method
    return config


def run_agent(worker_argv: Sequence[str], task_spec: str, start_method: str = "forkserver") -> int:
    """Run this node's agent until the job finishes, fails, or the agent is signalled.

    Returns:
        0 when training finished; 1 when the workers failed beyond ``PET_MAX_RESTARTS``;
        128 + signal number when the agent was told to stop; ``FATAL_EXIT_CODE`` for an
        invalid ``TRAINSCALE_METRICS_*`` setting.
    """
    config = build_launch_config(start_method)
    try:
        settings = metrics_settings_from_env(os.environ)
    except SettingsError as exc:
        print(f"trainscale-train: error: {exc}", file=sys.stderr, flush=True)
        return FATAL_EXIT_CODE
    with pod_metrics(settings, worker_argv) as metrics_dir:
        return _run(config, worker_argv, task_spec, start_method, metrics_dir)


def _run(
    config: LaunchConfig,
    worker_argv: Sequence[str],
    task_spec: str,
    start_method: str,
    metrics_dir: str,
) -> int:
    use_plain_torch_log_format()
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(
        _ExpectedRestartFilter()
    )
    if start_method == "forkserver":
        preload_forkserver(task_spec)  # no-op when the CLI already started it
        wait_for_forkserver()  # join the rendezvous (and pause the job) only when ready
    params = RendezvousParameters(
        backend=config.rdzv_backend,
        endpoint=config.rdzv_endpoint,
        run_id=config.run_id,
        min_nodes=config.min_nodes,
        max_nodes=config.max_nodes,
        local_addr=config.local_addr,
        **config.rdzv_configs,
    )
    handler = rdzv_registry.get_rendezvous_handler(params)
    # TRAINSCALE_FAST_RESIZE=0 gives torchrun's stock behaviour (benchmark baseline).
    fast = os.environ.get(ENV_FAST_RESIZE, "1") != "0"
    if fast:
        tune_rendezvous_polling(handler, RENDEZVOUS_POLL_SECONDS)
    rejoin_when_dropped(handler)
    spec = WorkerSpec(
        role=config.role,
        local_world_size=config.nproc_per_node,
        entrypoint=worker_main,
        args=(list(worker_argv), metrics_dir),
        rdzv_handler=handler,
        max_restarts=config.max_restarts,
        monitor_interval=config.monitor_interval,
        local_addr=config.local_addr,
    )
    shutdown_timeout = config.shutdown_timeout
    assert shutdown_timeout is not None  # LaunchConfig fills it in: PET_SHUTDOWN_TIMEOUT or 30
    agent = TrainscaleAgent(
        spec=spec,
        logs_specs=config.logs_specs,  # type: ignore[arg-type]
        start_method=config.start_method,
        log_line_prefix_template=config.log_line_prefix_template,
        # PET_SHUTDOWN_TIMEOUT (the operator sets it from the pod's grace period): how long
        # the workers may take to checkpoint after SIGTERM before they are killed.
        shutdown_timeout=shutdown_timeout,
    )
    agent.fast_leave = fast
    agent.metrics_dir = metrics_dir
    close_rendezvous = True
    try:
        result = agent.run()
        if result.is_failed():
            for rank, failure in result.failures.items():
                logger.error("worker rank %d failed with exit code %s", rank, failure.exitcode)
            return 1
        return 0
    except SignalException as exc:
        # Leaving must not close the rendezvous: the job goes on with the other nodes.
        close_rendezvous = False
        return 128 + int(exc.sigval)
    finally:
        if close_rendezvous:
            handler.shutdown()

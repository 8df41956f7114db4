"""The entry point of one worker process: what the agent (and ``trainscale-train --worker``)
starts on every rank.

Why this module exists: a worker's command line is the ``trainscale-train`` command line, so
parsing it belongs to the launch layer, while the training loop it hands over to belongs to
the runtime. This is where the two meet, and where a configuration error becomes the exit
code that tells the agent not to retry.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace

from trainscale.trainer.launch.cli import build_parser
from trainscale.trainer.runtime.batching import BatchSettingsError
from trainscale.trainer.runtime.data_order import DataOrderError
from trainscale.trainer.runtime.elastic import FATAL_EXIT_CODE, ResumeError
from trainscale.trainer.runtime.settings import SettingsError
from trainscale.trainer.runtime.task import TaskError
from trainscale.trainer.runtime.worker import build_worker_options, die_with_parent, train


def worker_main(argv: list[str], metrics_dir: str = "") -> int:
    """Entry point of a worker process started by our agent (function entrypoint).

    ``metrics_dir``: the pod's metrics directory, where this rank publishes its values for
    the agent's endpoint ("": serve them itself on the metrics port + local rank).
    """
    die_with_parent()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = build_worker_options(build_parser().parse_args(argv))
    options = replace(options, metrics_dir=metrics_dir or None)
    try:
        return train(options, os.environ)
    except (TaskError, BatchSettingsError, SettingsError, ResumeError, DataOrderError) as exc:
        # Retrying cannot fix a configuration error: tell the agent not to (see agent.py).
        print(f"trainscale-train: error: {exc}", file=sys.stderr, flush=True)
        os._exit(FATAL_EXIT_CODE)

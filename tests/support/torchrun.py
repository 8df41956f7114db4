"""A local elastic job whose agents are stock ``torchrun`` running a user's script.

Why this exists: the framework integrations (Hugging Face, Lightning) are used from a plain
``torchrun train.py`` pod, not through trainscale's own agent. Their tests run exactly that:
:class:`trainscale.trainer.launch.local.LocalCluster`'s rendezvous store and per-agent
``PET_*`` environment (what the operator gives a worker pod), with each agent started as
``python -m torch.distributed.run SCRIPT WORKER_ARGS...``. One definition for both tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trainscale.trainer.launch.local import (
    INDEX_KEY,
    AgentProcess,
    LocalCluster,
    LocalClusterConfig,
    build_agent_env,
)


class TorchrunCluster(LocalCluster):
    """:class:`LocalCluster` whose agents are stock ``torchrun`` running ``script``."""

    def __init__(self, config: LocalClusterConfig, *, script: Path, log_dir: Path) -> None:
        super().__init__(config, log_dir=log_dir)
        self.script = script

    def add_worker(self) -> AgentProcess:
        index = int(self.store.add(INDEX_KEY, 1)) - 1
        env = {**os.environ, **build_agent_env(self.config, self.endpoint, self.run_id, index)}
        assert self.log_dir is not None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"agent-{index}.log", "ab")  # noqa: SIM115 - closed by stop()
        process = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", str(self.script),
             *self.config.worker_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        agent = AgentProcess(index=index, process=process, log=log)
        self.agents.append(agent)
        return agent

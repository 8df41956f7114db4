"""The environment contract, the command line and the role a process plays.

Covers:
- TRAINSCALE_CHECKPOINT_* and TRAINSCALE_METRICS_* parsing, defaults and named errors;
- the metrics port per local rank; the progress label;
- which role ``trainscale-train`` takes from flags and environment;
- launcher-only flags are not forwarded to workers;
- task specs that cannot be loaded fail with a message naming them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainscale.trainer.launch.cli import build_parser, build_worker_argv, decide_role, task_of
from trainscale.trainer.runtime import settings as s


def test_checkpoint_policy_defaults_and_values() -> None:
    assert s.checkpoint_policy_from_env({}) == s.CheckpointPolicy(directory=None)
    policy = s.checkpoint_policy_from_env(
        {
            s.ENV_CHECKPOINT_DIR: "/ckpt",
            s.ENV_CHECKPOINT_INTERVAL_SECONDS: "0",
            s.ENV_CHECKPOINT_EVERY_STEPS: "50",
            s.ENV_CHECKPOINT_KEEP: "5",
        }
    )
    assert policy == s.CheckpointPolicy(
        directory=Path("/ckpt"), keep=5, interval_seconds=None, every_steps=50
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({s.ENV_CHECKPOINT_KEEP: "0"}, "TRAINSCALE_CHECKPOINT_KEEP='0'", id="keep"),
        pytest.param({s.ENV_CHECKPOINT_KEEP: "two"}, "not an integer", id="keep-text"),
        pytest.param(
            {s.ENV_CHECKPOINT_INTERVAL_SECONDS: "-1"}, "INTERVAL_SECONDS='-1'", id="interval"
        ),
        pytest.param({s.ENV_CHECKPOINT_INTERVAL_SECONDS: "soon"}, "not a number", id="text"),
    ],
)
def test_bad_checkpoint_env_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(s.SettingsError, match=message):
        s.checkpoint_policy_from_env(env)


def test_metrics_settings() -> None:
    assert s.metrics_settings_from_env({}) == s.MetricsSettings(port=9400, address="0.0.0.0")
    assert s.metrics_settings_from_env({s.ENV_METRICS_PORT: "0"}).port is None
    with pytest.raises(s.SettingsError, match="65535"):
        s.metrics_settings_from_env({s.ENV_METRICS_PORT: "70000"})
    assert s.compute_metrics_port(9400, 3) == 9403
    assert s.compute_metrics_port(None, 3) is None
    assert s.build_worker_label({s.ENV_JOB_NAME: "bert", s.ENV_REPLICA_INDEX: "2"}) == "bert/2"


@pytest.mark.parametrize(
    ("argv", "env", "role"),
    [
        pytest.param(["--task", "m:f"], {"LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "x"},
                     "worker", id="under-torchrun"),
        pytest.param(["--task", "m:f"], {"PET_RDZV_ENDPOINT": "job-rdzv:29400"}, "agent",
                     id="pod"),
        pytest.param(["--local", "--workers", "2", "--task", "m:f"], {}, "local", id="local"),
        pytest.param(["--task", "m:f"], {}, "local", id="bare"),
        pytest.param(["--join", "127.0.0.1:1234"], {}, "join", id="join"),
        pytest.param(["--serve-rendezvous"], {}, "rendezvous", id="rendezvous"),
    ],
)  # fmt: skip
def test_role(argv: list[str], env: dict[str, str], role: str) -> None:
    assert decide_role(build_parser().parse_args(argv), env) == role


def test_launcher_flags_are_not_forwarded() -> None:
    argv = ["--local", "--workers", "2", "--task", "m:f", "--max-workers=4", "--epochs", "3"]
    assert build_worker_argv(argv) == ["--task", "m:f", "--epochs", "3"]
    assert task_of(build_worker_argv(argv)) == "m:f"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("nocolon", "package.module:function", id="format"),
        pytest.param("trainscale.nope:task", "cannot import", id="module"),
        pytest.param("trainscale.trainer.runtime.settings:nothing", "no callable", id="attr"),
        pytest.param(
            "trainscale.trainer.runtime.settings:SettingsError", "expected Task", id="not-task"
        ),
    ],
)
def test_bad_task_spec_is_named(spec: str, message: str) -> None:
    from trainscale.trainer.runtime.task import TaskError, load_task

    with pytest.raises(TaskError, match=message):
        load_task(spec)

"""``make demo`` (scripts/demo.sh) and its props, without running the demo (it takes minutes
and needs root; run it by hand).

Covers:
- the script parses (``bash -n``), and every file and ``trainscale-testbed`` subcommand and
  flag it uses exists: a renamed example or flag breaks this test, not the demo in front of a
  newcomer;
- the job the script watches is the one its manifest defines, autoscaled, on process nodes,
  running the demo task;
- ``trainscale-testbed prometheus-config`` prints a prometheus.yml that discovers pods through
  the running test-bed's apiserver in the given namespace, keeping the chart's worker pods and
  their ``metrics`` port; it refuses clearly when no test-bed runs;
- the demo task is the digits task (held-out accuracy) whose every micro-batch sleeps the
  configured delay; a bad delay is refused naming the variable.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from trainscale.testbed import demotask
from trainscale.testbed.cluster import REPO_ROOT, Testbed, build_parser, cli

DEMO = REPO_ROOT / "scripts" / "demo.sh"


def script() -> str:
    return DEMO.read_text(encoding="utf-8")


def assignment(name: str) -> str:
    found = re.search(rf"^{name}=(\S+)$", script(), re.MULTILINE)
    assert found, f"scripts/demo.sh sets no {name}="
    return found.group(1)


def test_the_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(DEMO)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_files_it_uses_exist() -> None:
    paths = set(re.findall(r"(?:examples|manifests|scripts)/[\w./-]+\.(?:yaml|sh)", script()))
    paths.add(assignment("manifest"))
    assert {"manifests/crd/trainingjobs.trainscale.dev.yaml", "scripts/testbed/build.sh"} <= paths
    missing = [p for p in sorted(paths) if not (REPO_ROOT / p).exists()]
    assert not missing, missing


def test_the_testbed_subcommands_and_flags_it_uses_exist() -> None:
    calls = re.findall(r'"\$bin/trainscale-testbed" ([a-z-]+)([^\n>|]*)', script())
    assert {command for command, _ in calls} >= {"up", "prometheus-config", "down"}
    parser = build_parser()
    for command, rest in calls:
        argv = [command, *(a.strip('"') for a in rest.split())]
        argv = ["x" if a.startswith("$") else a for a in argv]  # shell values
        parser.parse_args(argv)  # exits (SystemExit) on an unknown subcommand or flag


def jobs_in(path: Path) -> list[dict[str, Any]]:
    docs = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return [d for d in docs if d and d.get("kind") == "TrainingJob"]


def test_the_watched_job_is_the_manifests_autoscaled_process_node_job() -> None:
    (job,) = jobs_in(REPO_ROOT / assignment("manifest"))
    assert job["metadata"]["name"] == assignment("job")
    spec = job["spec"]
    assert spec["autoscaling"]["enabled"] and spec["maxReplicas"] == 3  # the 1-2-3-2 story
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"type": "process"}
    command = pod["containers"][0]["command"]
    assert command[command.index("--task") + 1] == "trainscale.testbed.demotask:task"


@pytest.mark.testbed
@pytest.mark.slow
def test_prometheus_config_discovers_the_charts_worker_pods(testbed: Testbed) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("trainscale-testbed")), "prometheus-config",
         "--state-dir", str(testbed.paths.root), "-n", "team-a", "-n", "team-b"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["global"]["scrape_interval"] == "1s"
    (job,) = config["scrape_configs"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd == {"role": "pod", "kubeconfig_file": str(testbed.kubeconfig),
                  "namespaces": {"names": ["team-a", "team-b"]}}  # fmt: skip
    keeps = {json.dumps(r["source_labels"]): r["regex"]
             for r in job["relabel_configs"] if r.get("action") == "keep"}  # fmt: skip
    assert keeps == {
        '["__meta_kubernetes_pod_label_app_kubernetes_io_component", '
        '"__meta_kubernetes_pod_labelpresent_app_kubernetes_io_component"]': "(worker);true",
        '["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by", '
        '"__meta_kubernetes_pod_labelpresent_app_kubernetes_io_managed_by"]': "(trainscale);true",
        '["__meta_kubernetes_pod_container_port_name"]': "metrics",
    }


def test_prometheus_config_needs_a_running_testbed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["prometheus-config", "--state-dir", str(tmp_path / "none"), "-n", "default"])
    assert exited.value.code == 1
    assert "not running" in capsys.readouterr().err


def test_delay_is_read_from_the_environment() -> None:
    assert demotask.delay_seconds({}) == demotask.DEFAULT_DELAY_MS / 1000
    assert demotask.delay_seconds({demotask.ENV_DELAY_MS: "0"}) == 0
    assert demotask.delay_seconds({demotask.ENV_DELAY_MS: "250"}) == 0.25
    for bad in ("fast", "-1", "1.5"):
        with pytest.raises(ValueError, match=demotask.ENV_DELAY_MS):
            demotask.delay_seconds({demotask.ENV_DELAY_MS: bad})


@pytest.mark.slow  # imports scikit-learn, loads digits: seconds on a loaded machine
def test_the_task_is_digits_and_sleeps_per_micro_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(demotask.ENV_DELAY_MS, "200")
    task = demotask.task()
    assert task.evaluate is not None and "accuracy" in task.evaluate(task.model)
    batch = (torch.zeros(16, 64), torch.zeros(16, dtype=torch.long))
    started = time.monotonic()
    loss = task.loss(task.model, batch)
    assert time.monotonic() - started >= 0.2
    assert loss.ndim == 0 and loss.requires_grad

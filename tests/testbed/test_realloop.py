"""The operator and the trainer meet: a TrainingJob whose workers really train, on the
test-bed's process nodes.

Covers:
- ``kubectl apply`` of a TrainingJob running ``trainscale-train`` on the digits task, with its
  checkpoints on a claim: the operator creates the rendezvous pod and Service and two workers,
  the process runtime runs them (the workers find the store through the Service name, talk to
  each other over their pod IPs), training ends, the workers exit 0 and the job is Succeeded;
  the shared claim holds the checkpoints.

Its own control plane (module scope): one process node, and one kwok node cordoned so that
every pod of the job (the rendezvous pod has no nodeSelector) lands where processes run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.support.testbed import CRD_PATH, cleanup_namespace, make_namespace, wait_for
from tests.testbed.test_procnode import make_claim, process_testbed
from trainscale.testbed import procnode
from trainscale.testbed.cluster import Testbed

pytestmark = [pytest.mark.realloop, pytest.mark.testbed, pytest.mark.slow]


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    with process_testbed() as testbed:
        testbed.kubectl("cordon", "gpu-node-0")
        testbed.kubectl("apply", "--server-side", "-f", str(CRD_PATH))
        testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/trainingjobs.trainscale.dev")  # fmt: skip
        yield testbed


@pytest.fixture
def operator_ns(bed: Testbed) -> Iterator[str]:
    """A namespace, and the operator watching it (run as a user runs it)."""
    name = make_namespace(bed.kubectl, "realloop-")
    operator = OperatorProcess(bed, name, bed.paths.logs / f"operator-{name}.log").start()
    try:
        yield name
        cleanup_namespace(bed.kubectl, name)
    finally:
        operator.stop()


def digits_job(name: str, replicas: int, claim: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainscale.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "minReplicas": 1, "maxReplicas": replicas, "maxRestarts": 3,
            "autoscaling": {"enabled": False},
            "checkpoint": {"claimName": claim, "path": "/checkpoints"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 30,
                "nodeSelector": {"type": "process"},
                "containers": [{
                    "name": "trainer", "image": "ignored-by-the-process-runtime",
                    "command": ["trainscale-train", "--task",
                                "trainscale.trainer.examples.digits:task", "--max-steps", "60",
                                "--checkpoint-every-steps", "20"],
                    "resources": {"requests": {"cpu": "100m"}},
                }],
            }},
        },
    }  # fmt: skip


@pytest.mark.timeout(420)
def test_digits_job_trains_on_process_pods(bed: Testbed, operator_ns: str) -> None:
    ns = operator_ns
    make_claim(bed, ns, "ckpt")
    bed.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(digits_job("digits", 2, "ckpt")))

    def phase() -> str:
        tj = bed.fetch_json(f"/apis/trainscale.dev/v1alpha1/namespaces/{ns}/trainingjobs/digits")
        return str((tj.get("status") or {}).get("phase", ""))

    def describe() -> str:
        pods = bed.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout
        logs = sorted((bed.paths.procnode / "logs").glob(f"{ns}_*"))
        tails = "\n".join(f"== {p.name}\n" + "\n".join(p.read_text().splitlines()[-15:])
                          for p in logs)  # fmt: skip
        return f"job phase {phase()!r}\n{pods}\n{tails}"

    wait_for(lambda: phase() in ("Succeeded", "Failed"), timeout=240, interval=1,
             what="job digits Succeeded", describe=describe)  # fmt: skip
    assert phase() == "Succeeded", describe()
    checkpoints = procnode.claim_dir(bed.paths.procnode, ns, "ckpt")
    assert any(checkpoints.rglob("*")), describe()
    # Both workers trained together, over their pod IPs, to the last step.
    worker = procnode.container_log(bed.paths.procnode, ns, "digits-worker-0", "trainer")
    text = worker.read_text()
    assert "world 2" in text and "finished at step 60" in text, describe()

"""Cluster arbitration on the real control plane: autoscaled jobs share the test-bed's 16 GPUs.

One scenario, in the order a platform sees it, with ``trainscale operator`` as a process
(arbitration every second) and the jobs' metrics unreachable, so every size change comes from
arbitration and the jobs' hard limits, not from a fitted curve:

- two jobs asking for 8 workers each are admitted and share the 16 GPUs (8 + 8);
- a higher-priority job (its pods' PriorityClass) arriving shrinks them, never below their
  minReplicas, and gets its workers;
- a job whose minReplicas cannot fit waits as ``Queued``: no pod is created, ``kubectl get tj``
  and its status say why, with a ``Queued`` Event;
- when the higher-priority job finishes, its GPUs go to the others and the queued job starts.

Never more workers than GPUs are running at any moment we look.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess, arbitrated_job
from tests.e2e.test_e2e_loops import operator_samples
from tests.support.testbed import (
    GPUS_PER_NODE,
    NODES,
    describe_pods,
    wait_for,
    wait_for_every_gpu,
)
from trainscale.operator.observability.metric_names import (
    ARBITRATION_CEILING_NAME,
    PREEMPTIONS_NAME,
)
from trainscale.operator.observability.metric_names import (
    JOB_LABEL as METRIC_JOB_LABEL,
)
from trainscale.trainer.launch.local import find_free_port

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

JOB_LABEL = "trainscale.dev/job-name"
HIGH = "trainscale-e2e-high"
CAPACITY = NODES * GPUS_PER_NODE  # 16


autoscaled = arbitrated_job


@pytest.fixture
def high_priority(kubectl: Any) -> Iterator[str]:
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": HIGH},
                "value": 100000,
                "description": "trainscale e2e: a job that outranks the others",
            }
        ),
    )
    yield HIGH
    kubectl("delete", "priorityclass", HIGH, check=False)


def _running(kubectl: Any, namespace: str) -> dict[str, int]:
    """Running, not terminating, worker pods per job; never more than the GPUs."""
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    counts: dict[str, int] = {}
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if (
            labels.get("app.kubernetes.io/component") == "worker"
            and pod["status"].get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")
        ):
            counts[labels[JOB_LABEL]] = counts.get(labels[JOB_LABEL], 0) + 1
    assert sum(counts.values()) <= CAPACITY, counts
    return counts


def _status(kubectl: Any, namespace: str, job: str) -> dict[str, Any]:
    found = json.loads(kubectl("get", f"tj/{job}", "-n", namespace, "-o", "json").stdout)
    return dict(found.get("status") or {})


def _describe(kubectl: Any, namespace: str, operator: OperatorProcess) -> str:
    jobs = kubectl("get", "tj", "-n", namespace, check=False).stdout
    events = kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp",
                     check=False).stdout.splitlines()[-20:]  # fmt: skip
    return (f"running: {_running(kubectl, namespace)}\n{jobs}\n"
            f"{describe_pods(kubectl, namespace)}\n" + "\n".join(events) + "\n"
            + operator.log_tail())  # fmt: skip


class _Scene:
    """A test's private namespace with its operator running (arbitration every second):
    ``apply`` a manifest there, ``describe`` it for a failure's message."""

    def __init__(
        self,
        kubectl: Any,
        private_operator: tuple[str, Callable[..., OperatorProcess]],
        *args: str,
    ) -> None:
        self.kubectl = kubectl
        self.namespace, start = private_operator
        self.operator = start("--arbitration-interval", "1", *args)

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(obj))

    def describe(self) -> str:
        return _describe(self.kubectl, self.namespace, self.operator)


def _ceilings_fit(
    status: Callable[[str], dict[str, Any]], room: int, least: int
) -> dict[str, int] | None:
    """The big jobs' ceilings in status when they sum to at most ``room``, each >= ``least``."""
    shares = {job: status(job)["arbitration"]["ceiling"] for job in ("big-a", "big-b")}
    return shares if sum(shares.values()) <= room and min(shares.values()) >= least else None


def test_jobs_share_the_gpus_by_arbitration(
    kubectl: Any,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    high_priority: str,
) -> None:
    scene = _Scene(kubectl, private_operator)
    namespace, apply, describe = scene.namespace, scene.apply, scene.describe

    def running() -> dict[str, int]:
        return _running(kubectl, namespace)

    def status(job: str) -> dict[str, Any]:
        return _status(kubectl, namespace, job)

    # The scenario counts on all 16 GPUs: an earlier test's pods may still be going away.
    wait_for_every_gpu(kubectl, namespace)

    # 1. Two jobs that ask for 8 workers each: admitted, 8 + 8.
    apply(autoscaled("big-a", 8, 2, 8))
    apply(autoscaled("big-b", 8, 2, 8))
    wait_for(lambda: running() == {"big-a": 8, "big-b": 8}, timeout=90,
             what="both jobs admitted at 8 workers", describe=describe)  # fmt: skip
    assert status("big-a")["arbitration"]["ceiling"] == 8

    # 2. A higher-priority job arrives: the others shrink (never below 2) to make room.
    apply(autoscaled("urgent", 4, 4, 4, priority=high_priority))

    def urgent_runs() -> bool:
        now = running()
        return now.get("urgent") == 4 and now.get("big-a", 0) >= 2 and now.get("big-b", 0) >= 2

    wait_for(urgent_runs, timeout=90, what="the urgent job's 4 workers", describe=describe)
    # Each job's loop writes its own status.arbitration from the shared decision, so for a
    # pass or two a reader can see one job's new ceiling beside another's old one.
    wait_for(lambda: _ceilings_fit(status, CAPACITY - 4, 2), timeout=30,
             what="the big jobs' ceilings to leave room for urgent", describe=describe)  # fmt: skip

    # Told why: arbitration limits them (a job's autoscaler writes its lowered spec.replicas
    # and then the memory of the count it was forced off, and a pass reading between the two
    # writes may see a job wanting no more than it has, for that pass).
    def limited() -> list[str]:
        return [status(job)["arbitration"]["reason"] for job in ("big-a", "big-b")]

    wait_for(lambda: any("cluster arbitration" in reason for reason in limited()), timeout=10,
             what="a big job told that cluster arbitration limits it",
             describe=lambda: str(limited()))  # fmt: skip

    # 3. A job whose minimum cannot fit waits as Queued, with no pods.
    apply(autoscaled("wide", 10, 10, 10))

    def queued() -> bool:
        found = status("wide")
        return found.get("phase") == "Queued" and bool(
            (found.get("arbitration") or {}).get("queued")
        )

    wait_for(queued, timeout=60, what="the wide job Queued", describe=describe)
    assert "wide" not in running()
    table = kubectl("get", "tj", "wide", "-n", namespace).stdout
    assert "Queued" in table
    events = kubectl("get", "events", "-n", namespace, "--field-selector",
                     "involvedObject.name=wide", "-o", "json").stdout  # fmt: skip
    assert any(e.get("reason") == "Queued" for e in json.loads(events)["items"])

    # 4. The urgent job finishes: its GPUs go to the others and the queued job starts.
    pods = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", f"{JOB_LABEL}=urgent,"
                "app.kubernetes.io/component=worker", "-o", "json").stdout
    )["items"]  # fmt: skip
    for pod in pods:
        kubectl("patch", "pod", pod["metadata"]["name"], "-n", namespace, "--subresource=status",
                "--type=merge", "-p", json.dumps({"status": {"phase": "Succeeded"}}))  # fmt: skip
    wait_for(lambda: status("urgent").get("phase") == "Succeeded", timeout=60,
             what="the urgent job Succeeded", describe=describe)  # fmt: skip
    wait_for(lambda: running().get("wide") == 10, timeout=120,
             what="the queued job's 10 workers", describe=describe)  # fmt: skip
    assert not status("wide")["arbitration"]["queued"]
    final = running()
    assert final.get("big-a", 0) >= 2 and final.get("big-b", 0) >= 2, final


def test_jobs_shrunk_for_a_higher_priority_one_grow_back_when_it_leaves(
    kubectl: Any,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    high_priority: str,
) -> None:
    """Two jobs asking 8 each run 8 + 8; an urgent job of 4 shrinks them, and their
    autoscalers lower ``spec.replicas`` to the ceilings. They have no measurements, so the
    arbiter assumes what they asked for: when the urgent job is deleted they grow back to
    8 + 8 (with ``spec.replicas`` as the prior's top they wanted only what they had left,
    and their reason said they had all they could use)."""
    scene = _Scene(kubectl, private_operator)
    namespace, apply, describe = scene.namespace, scene.apply, scene.describe

    def asked() -> dict[str, int]:
        found = json.loads(kubectl("get", "tj", "-n", namespace, "-o", "json").stdout)["items"]
        return {tj["metadata"]["name"]: tj["spec"]["replicas"] for tj in found}

    wait_for_every_gpu(kubectl, namespace)
    apply(autoscaled("big-a", 8, 2, 8))
    apply(autoscaled("big-b", 8, 2, 8))
    wait_for(lambda: _running(kubectl, namespace) == {"big-a": 8, "big-b": 8}, timeout=90,
             what="both jobs at 8 workers", describe=describe)  # fmt: skip
    apply(autoscaled("urgent", 4, 4, 4, priority=high_priority))

    def shrunk() -> bool:
        now, spec = _running(kubectl, namespace), asked()
        big = ("big-a", "big-b")
        return now.get("urgent") == 4 and sum(spec[j] for j in big) <= CAPACITY - 4

    wait_for(shrunk, timeout=90, what="the urgent job running, the others' spec.replicas lowered",
             describe=describe)  # fmt: skip
    wait_for(lambda: all("cluster arbitration" in _status(kubectl, namespace, j)["arbitration"]
                         ["reason"] for j in ("big-a", "big-b") if asked()[j] < 8),
             timeout=10, what="the shrunk jobs told that arbitration limits them",
             describe=describe)  # fmt: skip

    kubectl("delete", "tj", "urgent", "-n", namespace)
    wait_for(lambda: _running(kubectl, namespace) == {"big-a": 8, "big-b": 8}, timeout=120,
             what="both jobs back at 8 workers", describe=describe)  # fmt: skip


@pytest.fixture
def polite_priority(kubectl: Any) -> Iterator[str]:
    """A PriorityClass as high as ``high_priority`` whose jobs never preempt."""
    name = f"{HIGH}-polite"
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": name}, "value": 100000, "preemptionPolicy": "Never",
        "description": "trainscale e2e: outranks the others, never preempts"}))  # fmt: skip
    yield name
    kubectl("delete", "priorityclass", name, check=False)


def test_a_higher_priority_job_preempts_a_running_one(
    kubectl: Any,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    high_priority: str,
    polite_priority: str,
) -> None:
    """A job holding all 16 GPUs at its minimum. A higher-priority job whose class says
    ``preemptionPolicy: Never`` waits Queued beside it; one whose class preempts (the
    Kubernetes default) queues it: its workers stop, its status names who took its place,
    and the urgent job runs. When that one is gone, the preempted job runs again."""
    scene = _Scene(kubectl, private_operator)
    namespace, apply, describe = scene.namespace, scene.apply, scene.describe

    def arbitration(job: str) -> dict[str, Any]:
        return dict(_status(kubectl, namespace, job).get("arbitration") or {})

    wait_for_every_gpu(kubectl, namespace)
    apply(autoscaled("whole", CAPACITY, CAPACITY, CAPACITY))
    wait_for(lambda: _running(kubectl, namespace) == {"whole": CAPACITY}, timeout=90,
             what="the whole job's 16 workers", describe=describe)  # fmt: skip

    apply(autoscaled("polite", 4, 4, 4, priority=polite_priority))
    wait_for(lambda: arbitration("polite").get("queued") is True, timeout=30,
             what="the polite job Queued", describe=describe)  # fmt: skip
    assert _running(kubectl, namespace) == {"whole": CAPACITY}
    kubectl("delete", "tj", "polite", "-n", namespace)

    apply(autoscaled("urgent", 4, 4, 4, priority=high_priority))
    wait_for(lambda: _running(kubectl, namespace) == {"urgent": 4}, timeout=90,
             what="the urgent job running, the whole job stopped", describe=describe)  # fmt: skip
    _assert_preempted(kubectl, namespace, "whole", "queued: needs 16 GPUs")

    kubectl("delete", "tj", "urgent", "-n", namespace)
    wait_for(lambda: _running(kubectl, namespace) == {"whole": CAPACITY}, timeout=120,
             what="the whole job running again", describe=describe)  # fmt: skip


@pytest.mark.parametrize("preemption", ["grow", "start"])
def test_a_higher_priority_job_grows_into_a_lower_priority_ones_gpus(
    kubectl: Any,
    private_operator: tuple[str, Callable[..., OperatorProcess]],
    high_priority: str,
    preemption: str,
) -> None:
    """Two jobs at their minimum hold 12 of the 16 GPUs (8 and 4). An urgent job asking for
    8 starts on the 4 free ones; as its pods would, it then takes the newer job's 4 GPUs:
    that job's workers stop and its status names who took them (``--arbitration-preemption
    grow``, the default). With ``start`` it stays at 4 beside them. The operator's /metrics
    say so: each job's ceiling, and the newer job's one preemption."""
    port = find_free_port()
    scene = _Scene(kubectl, private_operator, "--arbitration-preemption", preemption,
                   "--metrics-port", str(port), "--metrics-address", "127.0.0.1")  # fmt: skip
    namespace, apply, describe = scene.namespace, scene.apply, scene.describe

    wait_for_every_gpu(kubectl, namespace)
    apply(autoscaled("older", 8, 8, 8))
    wait_for(lambda: _running(kubectl, namespace) == {"older": 8}, timeout=90,
             what="the older job's 8 workers", describe=describe)  # fmt: skip
    apply(autoscaled("newer", 4, 4, 4))
    wait_for(lambda: _running(kubectl, namespace) == {"older": 8, "newer": 4}, timeout=90,
             what="the newer job's 4 workers", describe=describe)  # fmt: skip

    apply(autoscaled("urgent", 8, 4, 8, priority=high_priority))
    if preemption == "start":
        wait_for(lambda: _running(kubectl, namespace) == {"older": 8, "newer": 4, "urgent": 4},
                 timeout=90, what="the urgent job at 4 beside them", describe=describe)  # fmt: skip
        assert _status(kubectl, namespace, "urgent")["arbitration"]["ceiling"] == 4
        _wait_for_metrics(port, {"older": 8, "newer": 4, "urgent": 4}, {})
        return
    wait_for(lambda: _running(kubectl, namespace) == {"older": 8, "urgent": 8}, timeout=90,
             what="the urgent job grown to 8, the newer job stopped", describe=describe)  # fmt: skip
    _assert_preempted(kubectl, namespace, "newer", "queued: needs 4 GPUs, 0 free")
    _wait_for_metrics(port, {"older": 8, "newer": 0, "urgent": 8}, {"newer": 1})


def _wait_for_metrics(port: int, ceilings: dict[str, int], preemptions: dict[str, int]) -> None:
    """The operator's /metrics show each job's ceiling and its preemptions (0 where not
    given), as the status does."""

    def by_job(name: str) -> dict[str, float]:
        samples = operator_samples(port)
        return {s.labels[METRIC_JOB_LABEL]: s.value for s in samples if s.name == name}

    def shown() -> bool:
        return by_job(ARBITRATION_CEILING_NAME) == ceilings and by_job(PREEMPTIONS_NAME) == {
            job: preemptions.get(job, 0) for job in ceilings
        }

    wait_for(shown, timeout=30, what="the arbitration metrics",
             describe=lambda: f"{by_job(ARBITRATION_CEILING_NAME)} {by_job(PREEMPTIONS_NAME)}")  # fmt: skip


def _assert_preempted(kubectl: Any, namespace: str, job: str, queued: str) -> None:
    """``job`` waits Queued, its reason naming the urgent job and then ``queued``, and one
    Preempted Event says so (the reason when it was stopped)."""
    expected = f"preempted by {namespace}/urgent (priority 100000 over 0); {queued}"

    def waits_preempted() -> bool:
        found = _status(kubectl, namespace, job)
        arbitration = found.get("arbitration") or {}
        return (
            found.get("phase") == "Queued"
            and arbitration.get("reason", "").startswith(expected)
            and arbitration.get("preemptedBy") == f"{namespace}/urgent"  # kept by the schema
        )

    # the pass that saw the last pods go may land a moment after them
    wait_for(waits_preempted, timeout=30, what=f"{job} Queued, preempted",
             describe=lambda: str(_status(kubectl, namespace, job)))  # fmt: skip

    def preempted_events() -> list[str]:
        events = kubectl("get", "events", "-n", namespace, "--field-selector",
                         f"involvedObject.name={job},reason=Preempted", "-o", "json").stdout  # fmt: skip
        return [e["message"] for e in json.loads(events)["items"]]

    def one_event() -> bool:
        messages = preempted_events()
        return len(messages) == 1 and messages[0].startswith(expected)

    # kopf posts Events from a queue of its own: one may land a moment after the status
    wait_for(one_event, timeout=30, what=f"{job}'s Preempted Event",
             describe=lambda: str(preempted_events()))  # fmt: skip


def test_the_plan_read_back_is_the_plan_the_arbiter_made(
    kubectl: Any, private_operator: tuple[str, Callable[..., OperatorProcess]]
) -> None:
    """``status.arbitration.preferredNodes`` is written whole, on the real apiserver's merge
    patch: a node the plan does not hold (written there by hand, as a plan that moved the
    job left its old node) is gone after the next pass, and the passes after it write
    nothing. Merged key by key, the old node stayed for good, and every pass found the
    status changed and wrote it again."""
    scene = _Scene(kubectl, private_operator)
    namespace, describe = scene.namespace, scene.describe
    wait_for_every_gpu(kubectl, namespace)
    scene.apply(autoscaled("solo", 2, 2, 2))
    wait_for(lambda: _running(kubectl, namespace) == {"solo": 2}, timeout=90,
             what="the job's 2 workers", describe=describe)  # fmt: skip
    plan = _status(kubectl, namespace, "solo")["arbitration"]["preferredNodes"]
    assert plan and "ghost-node" not in plan, plan
    kubectl("patch", "tj/solo", "-n", namespace, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": {"arbitration": {"preferredNodes": {"ghost-node": 1}}}}))  # fmt: skip
    assert "ghost-node" in _status(kubectl, namespace, "solo")["arbitration"]["preferredNodes"]
    wait_for(lambda: _status(kubectl, namespace, "solo")["arbitration"]["preferredNodes"] == plan,
             timeout=30, what="the plan as the arbiter made it", describe=describe)  # fmt: skip

    def version() -> str:
        found = json.loads(kubectl("get", "tj/solo", "-n", namespace, "-o", "json").stdout)
        return str(found["metadata"]["resourceVersion"])

    def unchanged_for_3_passes() -> bool:  # arbitration runs every second here
        before = version()
        time.sleep(3)
        return version() == before

    wait_for(unchanged_for_3_passes, timeout=30, interval=0.1,
             what="passes that write nothing", describe=describe)  # fmt: skip

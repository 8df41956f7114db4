"""Priorities in the workload simulator (``benchmarks/cluster.py --urgent``).

Covers: the urgent share of a generated workload (the same jobs with or without it); the
baselines preempt as the default scheduler does for their pods, so that an urgent job does
not flatter arbitration by waiting only under the others: a gang job (fixed sizes) stops
whole, an elastic one keeps what its minimum allows, the lowest priority and then the newest
job go first, only workers on nodes the urgent job may use are taken, nothing is evicted
for a pod that would still not fit, a running urgent job's growth preempts too, and
``preemptionPolicy: Never`` preempts nowhere; every policy's placement stays within each
node's GPUs at every step of a workload with urgent jobs; the per-priority report.
"""

from __future__ import annotations

import math

import pytest

from trainscale.operator.autoscaling.workload import (
    LOW_PRIORITY,
    POLICIES,
    URGENT_PRIORITY,
    Cluster,
    Job,
    Running,
    generate,
    parse_trace,
    policy_per_job_oracle,
    simulate,
    tiers,
    with_priorities,
)

HEADER = "name,arrival_seconds,total_samples,curve,min_replicas,max_replicas,requested_replicas,priority,pool\n"  # fmt: skip
HORIZON = 48 * 3600.0


def trace(rows: str, pools: int | None = None) -> list[Job]:
    return parse_trace(HEADER + rows, name="t.csv", curves={}, pools=pools)


def held_at(policy: str, jobs: list[Job], cluster: Cluster, t: float) -> dict[str, int]:
    """The workers each job held at the first decision at or after ``t``."""
    result = simulate(policy, jobs, cluster, HORIZON)
    return dict(next(h for when, h, _ in result.timeline if when >= t))


def test_a_generated_workload_has_the_urgent_share_asked_and_the_same_jobs() -> None:
    plain = generate(seed=4, jobs=300, hours=8.0, gpus_per_node=4)
    urgent = generate(seed=4, jobs=300, hours=8.0, gpus_per_node=4, urgent=0.2)
    assert {j.priority for j in plain} == {0}
    high = [j for j in urgent if j.priority == URGENT_PRIORITY]
    assert 40 <= len(high) <= 80  # about a fifth, drawn per job
    assert {j.priority for j in urgent} == {0, URGENT_PRIORITY}
    assert [j.__dict__ | {"priority": 0} for j in urgent] == [j.__dict__ for j in plain]


def test_a_low_priority_share_leaves_the_urgent_jobs_and_the_rest_as_they_were() -> None:
    """``--low``: a share of the jobs that are not urgent gets :data:`LOW_PRIORITY` (three
    priorities with ``--urgent``); the urgent jobs and every job's work are unchanged."""
    urgent = generate(seed=4, jobs=300, hours=8.0, gpus_per_node=4, urgent=0.2)
    both = generate(seed=4, jobs=300, hours=8.0, gpus_per_node=4, urgent=0.2, low=0.3)
    assert {j.priority for j in both} == {LOW_PRIORITY, 0, URGENT_PRIORITY}
    low = [j for j in both if j.priority == LOW_PRIORITY]
    assert 50 <= len(low) <= 100  # about 0.3 of the 240 or so not urgent
    assert [j.priority == URGENT_PRIORITY for j in both] == [
        j.priority == URGENT_PRIORITY for j in urgent
    ]
    assert [j.__dict__ | {"priority": 0} for j in both] == [
        j.__dict__ | {"priority": 0} for j in urgent
    ]


def test_priorities_drawn_for_a_workload_read_elsewhere_are_a_generated_ones() -> None:
    """``with_priorities`` (``benchmarks/cluster.py --pollux N --urgent --low``) draws as
    ``generate`` does: the same jobs get the same priorities, nothing else changes."""
    plain = generate(seed=4, jobs=300, hours=8.0, gpus_per_node=4)
    drawn = with_priorities(plain, 4, urgent=0.2, low=0.3)
    assert drawn == generate(seed=4, jobs=300, hours=8.0, gpus_per_node=4, urgent=0.2, low=0.3)
    assert with_priorities(plain, 4, urgent=0.0, low=0.0) == plain


@pytest.mark.parametrize("policy", ["fixed", "per-job-oracle"])
def test_a_baseline_preempts_the_newest_lowest_priority_job_first(policy: str) -> None:
    """16 GPUs held by an old and a newer job of priority 0 and a newest one of 5: the urgent
    job's 4 pods take the newer priority-0 job's workers, not the newest (its priority is
    higher) nor the oldest. Fixed sizes stop it whole; the elastic one keeps 4."""
    jobs = trace(
        "old,0,90000000,0.0:0.0,2,4,4,0,\n"
        "newer,60,90000000,0.0:0.0,4,8,8,0,\n"
        "mid,120,90000000,0.0:0.0,2,4,4,5,\n"
        "urgent,600,500000,0.0:0.0,4,4,4,100,\n"
    )
    held = held_at(policy, jobs, Cluster(4, 4, 60.0, 1), 600)
    kept = 0 if policy == "fixed" else 4
    assert held == {"old": 4, "mid": 4, "urgent": 4} | ({"newer": kept} if kept else {})


def test_an_elastic_job_preempted_below_its_minimum_stops() -> None:
    jobs = trace(
        "big,0,90000000,0.0:0.0,14,16,16,0,\n"  # keeps 12 of its 16: under its minimum 14
        "urgent,600,500000,0.0:0.0,4,4,4,100,\n"
    )
    result = simulate("per-job-oracle", jobs, Cluster(4, 4, 60.0, 1), HORIZON)
    during = next(h for t, h, _ in result.timeline if t >= 600)
    assert during == {"urgent": 4}
    assert result.stops == 1
    assert dict(result.finishes)["urgent"] < dict(result.finishes)["big"]


def test_only_workers_on_the_nodes_the_urgent_job_may_use_are_taken() -> None:
    """Two pools of 8 GPUs: 'wide' (any node, the newest, priority 0) runs on pool 1 only,
    'held' fills pool 0. The urgent job, held to pool 0, preempts 'held' (older, but the
    only one there); 'wide' keeps all its workers."""
    jobs = trace(
        "held,0,90000000,0.0:0.0,2,8,8,0,0\n"
        "wide,60,90000000,0.0:0.0,2,8,8,0,\n"
        "urgent,600,500000,0.0:0.0,4,4,4,100,0\n",
        pools=2,
    )
    for policy, kept in (("fixed", 0), ("per-job-oracle", 4)):
        held = held_at(policy, jobs, Cluster(4, 4, 60.0, 1, pools=2), 600)
        assert held == {"wide": 8, "urgent": 4} | ({"held": kept} if kept else {}), policy


def test_an_elastic_job_across_pools_loses_only_its_workers_there() -> None:
    """'span' runs its workers 0-3 on node-02 (pool 1), 4-11 on pool 0, and 'fill' has
    node-03: every GPU is held. The urgent job held to pool 1 takes node-02's 4, so 'span'
    keeps its 8 on pool 0 (its highest indexes going first, as when nodes do not matter,
    would take all 12 for those 4)."""
    jobs = trace(
        "fill,0,90000000,0.0:0.0,4,4,4,0,1\n"
        "span,60,90000000,0.0:0.0,2,12,12,0,\n"
        "urgent,600,500000,0.0:0.0,4,4,4,100,1\n",
        pools=2,
    )
    cluster = Cluster(4, 4, 60.0, 1, pools=2)
    fill, span, urgent = (Running(j, allowed=cluster.admitted(j)) for j in jobs)
    fill.replicas, fill.nodes = 4, ["node-03"] * 4
    span.replicas, span.nodes = 12, ["node-02"] * 4 + ["node-00"] * 4 + ["node-01"] * 4
    out = policy_per_job_oracle([fill, span, urgent], cluster, 600.0)
    assert out == {"fill": 4, "span": 8, "urgent": 4}
    assert span.nodes == ["node-00"] * 4 + ["node-01"] * 4  # renumbered, as the trainer does


def test_the_urgent_jobs_pods_are_scheduled_before_the_preempted_jobs_new_ones() -> None:
    """'span' loses 4 workers on pool 0 to the urgent job and asks for them again in the
    same step (the oracle's growth); the scheduler's queue takes the urgent pods first, so
    they get pool 0's GPUs and 'span' gets node-03's."""
    jobs = trace(
        "span,0,90000000,0.0:0.0,2,12,12,0,\nurgent,600,500000,0.0:0.0,4,4,4,100,0\n",
        pools=2,
    )
    result = simulate("per-job-oracle", jobs, Cluster(4, 4, 60.0, 1, pools=2), HORIZON)
    assert next(h for t, h, _ in result.timeline if t >= 600) == {"span": 12, "urgent": 4}
    assert result.unplaced == 0


def test_the_waiting_urgent_job_goes_before_an_older_waiting_one() -> None:
    """4 GPUs free and 'low' holding 4: the urgent job (8) is taken from the queue before the
    older 'queued' (4), and preempts 'low'; in arrival order 'queued' would take the free 4
    and leave the urgent job no room to preempt into."""
    jobs = trace(
        "peer,0,90000000,0.0:0.0,8,8,8,100,\n"
        "low,0,90000000,0.0:0.0,4,4,4,0,\n"
        "queued,590,90000000,0.0:0.0,4,4,4,0,\n"
        "urgent,600,500000,0.0:0.0,8,8,8,100,\n"
    )
    cluster = Cluster(4, 4, 60.0, 1)
    assert held_at("fixed", jobs, cluster, 0) == {"peer": 8, "low": 4}
    assert held_at("fixed", jobs, cluster, 600) == {"peer": 8, "urgent": 8}


def test_nothing_is_evicted_for_pods_that_would_still_not_fit() -> None:
    """The urgent job asks all 16 GPUs; 8 are held by a job of its own priority, so
    preempting the 8 of priority 0 would not make room: that job runs on, under every
    baseline, and the urgent one waits."""
    jobs = trace(
        "peer,0,90000000,0.0:0.0,8,8,8,100,\n"
        "low,60,90000000,0.0:0.0,8,8,8,0,\n"
        "urgent,600,500000,0.0:0.0,16,16,16,100,\n"
    )
    for policy in ("fixed", "per-job-oracle", "hpa"):
        result = simulate(policy, jobs, Cluster(4, 4, 60.0, 1), 3 * 3600.0)
        assert result.stops == 0, policy
        assert all(h == {"peer": 8, "low": 8} for t, h, _ in result.timeline if t >= 600), policy


def test_a_running_urgent_jobs_growth_preempts_lower_priority_workers() -> None:
    """The oracle grows the urgent job from the 8 free GPUs to its 12 (no sync: its floor
    count is its maximum), taking 4 of the priority-0 job's 8, which runs on with 4."""
    jobs = trace("low,0,90000000,0.0:0.0,2,8,8,0,\nurgent,600,90000000,0.0:0.0,1,12,8,100,\n")
    result = simulate("per-job-oracle", jobs, Cluster(4, 4, 60.0, 1), HORIZON)
    steps = [h for t, h, _ in result.timeline if t >= 600]
    assert steps[0] == {"low": 8, "urgent": 8}  # started with what was free
    assert steps[1] == {"low": 4, "urgent": 12}  # then grew into low's workers
    assert result.stops == 0


def test_never_preempting_classes_preempt_under_no_policy() -> None:
    """(At its minimum, the running job cannot be shrunk for the urgent one either: the
    arbiter's priority tiers shrink lower jobs to their minimum, which is not preemption.)"""
    jobs = trace("low,0,90000000,0.0:0.0,16,16,16,0,\nurgent,600,500000,0.0:0.0,4,4,4,100,\n")
    for policy in POLICIES:
        result = simulate(policy, jobs, Cluster(4, 4, 60.0, 1, preempts=False), 1200.0)
        assert result.stops == 0, policy
        assert next(h for t, h, _ in result.timeline if t >= 600) == {"low": 16}, policy


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_step_of_a_workload_with_urgent_jobs_fits_the_nodes(
    policy: str, checked_steps: list[int]
) -> None:
    jobs = generate(seed=3, jobs=40, hours=1.5, gpus_per_node=4, urgent=0.3)
    cluster = Cluster(8, 4, 60.0, 3, pools=2, restricted=0.5)
    result = simulate(policy, jobs, cluster, 24 * 3600.0)
    assert result.unfinished == 0
    assert checked_steps
    assert result.stops > 0 or policy not in ("fixed", "trainscale")


def test_the_report_splits_jct_by_priority() -> None:
    """An urgent job that preempts finishes a job's length after it arrives (slowdown 1,
    start-up included), the preempted one later than alone."""
    jobs = trace("low,0,2000000,0.0:0.0,16,16,16,0,\nurgent,600,240000,0.0:0.0,4,4,4,100,\n")
    cluster = Cluster(4, 4, 60.0, 1)
    result = simulate("fixed", jobs, cluster, HORIZON)
    urgent, low = tiers(result, jobs, cluster)
    assert (urgent.priority, urgent.jobs, urgent.unfinished) == (100, 1, 0)
    assert urgent.avg_jct == urgent.p99_jct == pytest.approx(60 + 240000 / 400, abs=60)
    assert urgent.worst_slowdown == pytest.approx(1.0, abs=0.1)
    assert low.priority == 0
    assert low.avg_jct > 60 + 2000000 / 1600 + 600  # waited for the urgent job, restarted
    assert low.worst_slowdown > 1.4
    never = simulate("fixed", jobs, Cluster(4, 4, 60.0, 1, preempts=False), HORIZON)
    assert tiers(never, jobs, cluster)[0].avg_jct > urgent.avg_jct + 600  # waited for low
    unfinished = simulate("fixed", jobs, Cluster(4, 4, 60.0, 1, preempts=False), 1200.0)
    assert all(math.isinf(t.avg_jct) for t in tiers(unfinished, jobs, cluster))

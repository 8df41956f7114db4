"""Which nodes may run a job's workers (trainscale.operator.autoscaling.node_filters), pure.

Covers, one row per rule of the scheduler's NodeAffinity and TaintToleration filters:
- a toleration against a taint: effect, key, Equal and Exists, empty key with Exists,
  unknown operators;
- taints: only NoSchedule and NoExecute exclude a node, PreferNoSchedule does not; a cordoned
  node admits only pods tolerating the cordon;
- node selector requirements: In, NotIn (absent key too), Exists, DoesNotExist, Gt, Lt
  (integers only), unknown operators; matchFields on metadata.name;
- required node affinity: terms are ORed, requirements inside a term ANDed, an empty term
  matches nothing, nodeSelector and affinity both apply;
- the reason a node is excluded names the field, and the summary counts nodes per reason;
- a required pod anti-affinity on kubernetes.io/hostname selecting the job's other workers
  (label selector, the namespaces it looks in, matchLabelKeys and mismatchLabelKeys) lets a
  node run one of them; other topology keys, other pods and preferred terms bind nothing;
- a topology spread constraint on kubernetes.io/hostname that must hold, selecting the job's
  own workers and no other job's, lets a node run maxSkew of them where a node it counts
  never holds one: a node its workers may not use (counted by nodeTaintsPolicy Ignore, or
  nodeAffinityPolicy Ignore), or more nodes counted than its maxReplicas; where it may have a
  worker on every node counted the bound moves, and lists the nodes counted; soft
  constraints, zones, nodes without the keys, selectors reaching other jobs' pods or only
  itself, and a bad maxSkew bind nothing; the tightest of several rules wins, named (a fixed
  bound before a moving one of its size).
The same rules are checked against the real kube-scheduler on the test-bed
(tests/e2e/test_e2e_node_pools.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from trainscale.operator.autoscaling.node_filters import (
    ANTI_AFFINITY_RULE,
    NodeBound,
    compute_eligible_nodes,
    compute_max_workers_per_node,
    explain_misfit,
    explain_no_node,
    matches_requirement,
    matches_term,
    scheduling_key,
    tolerates,
    untolerated_taint,
)


def node(name: str, labels: dict[str, str] | None = None, taints: Any = ()) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": list(taints)},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }


def taint(key: str, value: str = "", effect: str = "NoSchedule") -> dict[str, str]:
    out = {"key": key, "effect": effect}
    if value:
        out["value"] = value
    return out


def req(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


@pytest.mark.parametrize(
    ("toleration", "expected"),
    [
        pytest.param({"key": "k", "value": "v", "effect": "NoSchedule"}, True, id="exact"),
        pytest.param({"key": "k", "operator": "Equal", "value": "v"}, True, id="any-effect"),
        pytest.param({"key": "k", "value": "w"}, False, id="other-value"),
        pytest.param({"key": "other", "operator": "Exists"}, False, id="other-key"),
        pytest.param({"key": "k", "operator": "Exists"}, True, id="exists-any-value"),
        pytest.param({"operator": "Exists"}, True, id="empty-key-exists-tolerates-all"),
        pytest.param({"key": "k", "value": "v", "effect": "NoExecute"}, False, id="other-effect"),
        pytest.param({"key": "k", "operator": "Lt", "value": "v"}, False, id="unknown-operator"),
        pytest.param({"key": "k"}, False, id="equal-to-empty-value"),
    ],
)
def test_tolerates(toleration: dict[str, Any], expected: bool) -> None:
    assert tolerates(toleration, taint("k", "v")) is expected


@pytest.mark.parametrize(
    ("taints", "tolerations", "blocking"),
    [
        pytest.param([], [], None, id="no-taints"),
        pytest.param([taint("k", "v")], [], "k", id="no-schedule-blocks"),
        pytest.param([taint("k", effect="NoExecute")], [], "k", id="no-execute-blocks"),
        pytest.param([taint("k", effect="PreferNoSchedule")], [], None, id="prefer-does-not"),
        pytest.param(
            [taint("a"), taint("b")], [{"key": "a", "operator": "Exists"}], "b", id="each-taint"
        ),
        pytest.param([taint("a"), taint("b")], [{"operator": "Exists"}], None, id="all-tolerated"),
    ],
)
def test_untolerated_taint(taints: Any, tolerations: Any, blocking: str | None) -> None:
    found = untolerated_taint({"tolerations": tolerations}, node("n", taints=taints))
    assert (found or {}).get("key") == blocking


LABELS = {"pool": "a", "gpu.count": "8"}


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        pytest.param(req("pool", "In", "a", "b"), True, id="in"),
        pytest.param(req("pool", "In", "b"), False, id="in-other"),
        pytest.param(req("zone", "In", "a"), False, id="in-absent"),
        pytest.param(req("pool", "NotIn", "b"), True, id="not-in"),
        pytest.param(req("pool", "NotIn", "a"), False, id="not-in-listed"),
        pytest.param(req("zone", "NotIn", "a"), True, id="not-in-absent-key"),
        pytest.param(req("pool", "Exists"), True, id="exists"),
        pytest.param(req("zone", "Exists"), False, id="exists-absent"),
        pytest.param(req("zone", "DoesNotExist"), True, id="does-not-exist"),
        pytest.param(req("pool", "DoesNotExist"), False, id="does-not-exist-present"),
        pytest.param(req("gpu.count", "Gt", "4"), True, id="gt"),
        pytest.param(req("gpu.count", "Gt", "8"), False, id="gt-equal"),
        pytest.param(req("gpu.count", "Lt", "9"), True, id="lt"),
        pytest.param(req("gpu.count", "Lt", "8"), False, id="lt-equal"),
        pytest.param(req("pool", "Gt", "1"), False, id="gt-not-an-integer"),
        pytest.param(req("zone", "Gt", "1"), False, id="gt-absent"),
        pytest.param(req("gpu.count", "Gt", "4", "5"), False, id="gt-two-values"),
        pytest.param(req("pool", "Near", "a"), False, id="unknown-operator"),
    ],
)
def test_matches_requirement(requirement: dict[str, Any], expected: bool) -> None:
    assert matches_requirement(requirement, LABELS) is expected


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        pytest.param({"matchExpressions": [req("pool", "In", "a")]}, True, id="expression"),
        pytest.param(
            {"matchExpressions": [req("pool", "In", "a"), req("gpu.count", "Gt", "8")]},
            False,
            id="expressions-anded",
        ),
        pytest.param({"matchFields": [req("metadata.name", "In", "n1")]}, True, id="field"),
        pytest.param({"matchFields": [req("metadata.name", "NotIn", "n1")]}, False, id="not-field"),
        pytest.param(
            {
                "matchExpressions": [req("pool", "In", "a")],
                "matchFields": [req("metadata.name", "In", "n2")],
            },
            False,
            id="fields-and-expressions-anded",
        ),
        pytest.param({}, False, id="empty-term-matches-nothing"),
    ],
)
def test_matches_term(term: dict[str, Any], expected: bool) -> None:
    assert matches_term(term, node("n1", LABELS)) is expected


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
        }
    }


NODES = [
    node("a1", {"pool": "a"}),
    node("a2", {"pool": "a"}),
    node("b1", {"pool": "b"}, [taint("dedicated", "b")]),
    node("c1", {"pool": "c"}, [taint("maintenance", effect="PreferNoSchedule")]),
]


@pytest.mark.parametrize(
    ("pod_spec", "eligible"),
    [
        pytest.param({}, {"a1", "a2", "c1"}, id="plain-pod-avoids-the-tainted-node"),
        pytest.param({"nodeSelector": {"pool": "a"}}, {"a1", "a2"}, id="node-selector"),
        pytest.param({"nodeSelector": {"pool": "b"}}, set(), id="selector-on-a-tainted-pool"),
        pytest.param(
            {
                "nodeSelector": {"pool": "b"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "b"}],
            },
            {"b1"},
            id="selector-and-toleration",
        ),
        pytest.param(
            {"affinity": affinity({"matchExpressions": [req("pool", "In", "a", "c")]})},
            {"a1", "a2", "c1"},
            id="required-affinity",
        ),
        pytest.param(
            {
                "affinity": affinity(
                    {"matchExpressions": [req("pool", "In", "c")]},
                    {"matchFields": [req("metadata.name", "In", "a2")]},
                )
            },
            {"a2", "c1"},
            id="terms-ored",
        ),
        pytest.param(
            {
                "nodeSelector": {"pool": "a"},
                "affinity": affinity({"matchExpressions": [req("pool", "NotIn", "a")]}),
            },
            set(),
            id="selector-and-affinity-both-apply",
        ),
        pytest.param(
            {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}},
            {"a1", "a2", "c1"},
            id="preferred-excludes-nothing",
        ),
        pytest.param({"tolerations": [{"operator": "Exists"}]}, {"a1", "a2", "b1", "c1"},
                     id="tolerate-everything"),
    ],
)  # fmt: skip
def test_compute_eligible_nodes(pod_spec: dict[str, Any], eligible: set[str]) -> None:
    assert compute_eligible_nodes(pod_spec, NODES) == eligible


@pytest.mark.parametrize(
    ("pod_spec", "name", "reason"),
    [
        pytest.param({"nodeSelector": {"pool": "b"}}, "a1", "nodeSelector pool=b", id="selector"),
        pytest.param(
            {"affinity": affinity({"matchExpressions": [req("pool", "In", "z")]})},
            "a1",
            "required node affinity",
            id="affinity",
        ),
        pytest.param({}, "b1", "taint dedicated=b:NoSchedule", id="taint-with-value"),
        pytest.param({}, "a1", None, id="fits"),
    ],
)
def test_explain_misfit_names_the_field(
    pod_spec: dict[str, Any], name: str, reason: str | None
) -> None:
    target = next(n for n in NODES if n["metadata"]["name"] == name)
    assert explain_misfit(pod_spec, target) == reason


@pytest.mark.parametrize(
    ("tolerations", "reason"),
    [
        pytest.param([], "cordoned", id="cordoned"),
        pytest.param([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}], None,
                     id="tolerating-the-cordon"),
        pytest.param([{"operator": "Exists"}], None, id="tolerating-everything"),
    ],
)  # fmt: skip
def test_a_cordoned_node_admits_only_pods_tolerating_the_cordon(
    tolerations: list[dict[str, str]], reason: str | None
) -> None:
    cordoned = node("n")
    cordoned["spec"]["unschedulable"] = True
    assert explain_misfit({"tolerations": tolerations}, cordoned) == reason


def test_a_taint_without_a_value_is_named_by_its_key() -> None:
    assert explain_misfit({}, node("n", taints=[taint("gpu")])) == "taint gpu:NoSchedule"


def test_explain_no_node_counts_the_nodes_each_reason_excludes() -> None:
    pod_spec = {"nodeSelector": {"pool": "b"}}
    assert explain_no_node(pod_spec, NODES) == "nodeSelector pool=b excludes 3 nodes; " + (
        "taint dedicated=b:NoSchedule excludes 1 node"
    )
    assert explain_no_node(pod_spec, []) == "no node with nvidia.com/gpu is listed"


@pytest.mark.parametrize(
    ("others", "expected"),
    [
        pytest.param([], "nodeSelector pool=t excludes 4 nodes", id="none-without-gpus"),
        pytest.param(
            [node("t1", {"pool": "t"})],
            "nodeSelector pool=t excludes 4 nodes; the 1 node it may run on (t1) advertises "
            "no nvidia.com/gpu: is the NVIDIA device plugin running there?",
            id="one",
        ),
        pytest.param(
            [node(f"t{i}", {"pool": "t"}) for i in (4, 1, 3, 2)] + [node("s", {"pool": "s"})],
            "nodeSelector pool=t excludes 4 nodes; the 4 nodes it may run on (t1, t2, t3, ...) "
            "advertise no nvidia.com/gpu: is the NVIDIA device plugin running there?",
            id="named-up-to-three-sorted",
        ),
        pytest.param(
            [node("t1", {"pool": "t"}, [taint("dedicated", "b")])],
            "nodeSelector pool=t excludes 4 nodes",
            id="only-nodes-it-passes-the-filters-on",
        ),
    ],
)
def test_explain_no_node_names_the_nodes_it_may_run_on_without_gpus(
    others: list[dict[str, Any]], expected: str
) -> None:
    """A template whose pool advertises no GPU (the NVIDIA device plugin is not running
    there) is told so: a reason naming only the GPU nodes it excludes sends the reader to
    the wrong pool."""
    assert explain_no_node({"nodeSelector": {"pool": "t"}}, NODES, others) == expected


def test_the_scheduling_key_holds_exactly_the_fields_the_filters_read() -> None:
    base = {"nodeSelector": {"pool": "a"}, "tolerations": [{"operator": "Exists"}]}
    same = {**base, "containers": [{"name": "x"}], "priorityClassName": "high",
            "affinity": {"podAffinity": {"x": 1}}}  # fmt: skip
    assert scheduling_key(same) == scheduling_key(base)
    for other in (
        {**base, "nodeSelector": {"pool": "b"}},
        {**base, "tolerations": []},
        {**base, "affinity": affinity({"matchExpressions": [req("pool", "In", "a")]})},
    ):
        assert scheduling_key(other) != scheduling_key(base)


OWN = {"app": "bert", "trainscale.dev/job-name": "j", "trainscale.dev/replica-index": "0"}
PEER = {**OWN, "trainscale.dev/replica-index": "1"}


def anti(*terms: dict[str, Any], preferred: bool = False) -> dict[str, Any]:
    if preferred:
        rules = {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": t} for t in terms
        ]}  # fmt: skip
    else:
        rules = {"requiredDuringSchedulingIgnoredDuringExecution": list(terms)}
    return {"affinity": {"podAntiAffinity": rules}}


def term(selector: Any, key: str = "kubernetes.io/hostname", **extra: Any) -> dict[str, Any]:
    return {"labelSelector": selector, "topologyKey": key, **extra}


JOB = {"matchLabels": {"trainscale.dev/job-name": "j"}}


@pytest.mark.parametrize(
    ("pod_spec", "expected"),
    [
        pytest.param({}, None, id="no-affinity"),
        pytest.param(anti(term(JOB)), 1, id="own-workers-on-hostname"),
        pytest.param(anti(term({"matchLabels": {"app": "bert"}})), 1, id="by-a-template-label"),
        pytest.param(
            anti(term({"matchExpressions": [req("app", "In", "bert", "gpt")]})),
            1,
            id="match-expression",
        ),
        pytest.param(anti(term({})), 1, id="empty-selector-selects-every-pod"),
        pytest.param(anti(term(None)), None, id="no-selector-selects-none"),
        pytest.param(anti(term({"matchLabels": {"app": "inference"}})), None, id="other-pods"),
        pytest.param(anti(term(JOB, key="topology.kubernetes.io/zone")), None, id="zone-not-read"),
        pytest.param(anti(term(JOB), preferred=True), None, id="preferred-excludes-nothing"),
        pytest.param(
            anti(term({"matchExpressions": [req("trainscale.dev/replica-index", "Gt", "0")]})),
            None,
            id="operator-a-label-selector-may-not-use",
        ),
        pytest.param(anti(term(JOB, namespaces=["other"])), None, id="other-namespace"),
        pytest.param(anti(term(JOB, namespaces=["other", "team"])), 1, id="own-namespace-listed"),
        pytest.param(anti(term(JOB, namespaceSelector={})), 1, id="every-namespace"),
        pytest.param(
            anti(
                term(
                    JOB, namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "team"}}
                )
            ),
            1,
            id="namespace-selected-by-name",
        ),
        pytest.param(
            anti(term(JOB, namespaceSelector={"matchLabels": {"env": "prod"}})),
            None,
            id="namespace-label-not-known",
        ),
        pytest.param(
            anti(term(JOB, matchLabelKeys=["trainscale.dev/replica-index"])),
            None,
            id="match-label-keys-select-only-the-same-index",
        ),
        pytest.param(
            anti(term(JOB, matchLabelKeys=["trainscale.dev/job-name", "absent"])),
            1,
            id="match-label-keys-shared-or-absent",
        ),
        pytest.param(
            anti(term(JOB, mismatchLabelKeys=["trainscale.dev/replica-index"])),
            1,
            id="mismatch-label-keys-other-indexes",
        ),
        pytest.param(
            anti(term(JOB, mismatchLabelKeys=["app"])), None, id="mismatch-label-keys-shared"
        ),
        pytest.param(anti(term({"matchLabels": {"app": "x"}}), term(JOB)), 1, id="any-term"),
    ],
)
def test_compute_max_workers_per_node(pod_spec: dict[str, Any], expected: int | None) -> None:
    bound = compute_max_workers_per_node(pod_spec, OWN, PEER, "team")
    assert (bound.workers if bound is not None else None) == expected
    assert bound is None or bound.rule == ANTI_AFFINITY_RULE


STRANGER = {**OWN, "trainscale.dev/job-name": "j-another"}
HOST = "kubernetes.io/hostname"
DEDICATED = taint("dedicated", "infer")
#: Nodes a and b the job may use; c tainted for another team (not tolerated by default).
SPREAD_NODES = [
    node("a", {HOST: "a", "pool": "x"}),
    node("b", {HOST: "b", "pool": "y"}),
    node("c", {HOST: "c", "pool": "y"}, [DEDICATED]),
]


def spread(skew: Any = 2, key: str = HOST, selector: Any = JOB, **extra: Any) -> dict[str, Any]:
    return {"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": selector, **extra}  # fmt: skip


def spreads(*constraints: dict[str, Any], **pod: Any) -> dict[str, Any]:
    return {"topologySpreadConstraints": list(constraints), **pod}


AB = frozenset("ab")
TOLERATE = {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}
SPREAD = "its topologySpreadConstraints: maxSkew 2 on kubernetes.io/hostname"
SPREAD_RULE = SPREAD + ", and "
IDLE_C = SPREAD_RULE + "node c is counted and takes none of its workers"


def _as_row(bound: NodeBound | None) -> tuple[Any, ...] | None:
    """A bound as the rows write it: its workers and rule, and for a bound that moves its
    nodes too; None for none."""
    if bound is None:
        return None
    if bound.domains is None:
        return (bound.workers, bound.rule)
    return (bound.workers, bound.rule, bound.domains)


@pytest.mark.parametrize(
    ("pod_spec", "nodes", "max_replicas", "expected"),
    [
        pytest.param(
            spreads(spread()), SPREAD_NODES[:2], 4, (2, SPREAD, AB), id="may-cover-every-node"
        ),
        pytest.param(
            spreads(spread()), SPREAD_NODES[:2], 2, (2, SPREAD, AB), id="as-many-workers-as-nodes"
        ),
        pytest.param(
            spreads(spread()),
            SPREAD_NODES[:2],
            1,
            (2, SPREAD_RULE + "2 nodes are counted, more than its maxReplicas"),
            id="more-nodes-than-workers",
        ),
        pytest.param(spreads(spread()), SPREAD_NODES, 16, (2, IDLE_C), id="tainted-node-counted"),
        pytest.param(
            spreads(spread(nodeTaintsPolicy="Honor")),
            SPREAD_NODES,
            16,
            (2, SPREAD, AB),
            id="taints-honored",
        ),
        pytest.param(
            spreads(spread(), **TOLERATE),
            SPREAD_NODES,
            16,
            (2, SPREAD, frozenset("abc")),
            id="tolerated",
        ),
        pytest.param(
            spreads(spread(), nodeSelector={"pool": "x"}),
            SPREAD_NODES[:2],
            16,
            (2, SPREAD, frozenset("a")),
            id="affinity-honored-counts-its-pool-only",
        ),
        pytest.param(
            spreads(spread(nodeAffinityPolicy="Ignore"), nodeSelector={"pool": "x"}),
            SPREAD_NODES[:2],
            16,
            (2, SPREAD_RULE + "node b is counted and takes none of its workers"),
            id="affinity-ignored-counts-other-pools",
        ),
        pytest.param(
            spreads({**spread(), "whenUnsatisfiable": "ScheduleAnyway"}),
            SPREAD_NODES,
            16,
            None,
            id="soft",
        ),
        pytest.param(
            spreads(spread(key="topology.kubernetes.io/zone")), SPREAD_NODES, 16, None, id="zone"
        ),
        pytest.param(
            spreads(spread(), spread(key="topology.kubernetes.io/zone")),
            SPREAD_NODES,
            16,
            None,
            id="nodes-without-every-key-not-counted",
        ),
        pytest.param(
            spreads(spread(selector={"matchLabels": {"app": "bert"}})),
            SPREAD_NODES,
            16,
            None,
            id="other-jobs-pods-counted-too",
        ),
        pytest.param(
            spreads(
                spread(
                    selector={"matchLabels": {"app": "bert"}},
                    matchLabelKeys=["trainscale.dev/job-name"],
                )
            ),
            SPREAD_NODES,
            16,
            (2, IDLE_C),
            id="match-label-keys-keep-to-the-job",
        ),
        pytest.param(
            spreads(spread(matchLabelKeys=["trainscale.dev/replica-index"])),
            SPREAD_NODES,
            16,
            None,
            id="selects-only-itself",
        ),
        pytest.param(spreads(spread(selector={})), SPREAD_NODES, 16, None, id="empty-selector"),
        pytest.param(spreads(spread(selector=None)), SPREAD_NODES, 16, None, id="no-selector"),
        pytest.param(spreads(spread(skew=0)), SPREAD_NODES, 16, None, id="bad-skew"),
        pytest.param(spreads(spread(skew="x")), SPREAD_NODES, 16, None, id="skew-not-a-number"),
        pytest.param(
            spreads(spread(skew=3), spread()), SPREAD_NODES, 16, (2, IDLE_C), id="tightest-skew"
        ),
        pytest.param(
            spreads(spread(minDomains=3)),
            SPREAD_NODES[:2],
            16,
            (2, SPREAD_RULE + "2 nodes are counted, fewer than its minDomains 3"),
            id="fewer-nodes-than-min-domains",
        ),
        pytest.param(
            spreads(spread(minDomains=2)),
            SPREAD_NODES[:2],
            16,
            (2, SPREAD, AB),
            id="min-domains-met",
        ),
        pytest.param(
            {**spreads(spread()), **anti(term(JOB))},
            SPREAD_NODES,
            16,
            (1, ANTI_AFFINITY_RULE),
            id="anti-affinity-tighter",
        ),
        pytest.param(
            {**spreads(spread(skew=1), **TOLERATE), **anti(term(JOB))},
            SPREAD_NODES,
            16,
            (1, ANTI_AFFINITY_RULE),
            id="a-fixed-bound-before-a-moving-one-of-its-size",
        ),
        pytest.param(
            spreads(spread(skew=1, nodeTaintsPolicy="Honor"), spread(skew=3)),
            SPREAD_NODES,
            16,
            (1, "its topologySpreadConstraints: maxSkew 1 on kubernetes.io/hostname", AB),
            id="a-moving-bound-of-fewer-workers-first",
        ),
    ],
)
def test_a_spread_constraint_bounds_workers_per_node(
    pod_spec: dict[str, Any],
    nodes: list[dict[str, Any]],
    max_replicas: int,
    expected: tuple[Any, ...] | None,
) -> None:
    bound = compute_max_workers_per_node(
        pod_spec, OWN, PEER, "team", stranger_labels=STRANGER, nodes=nodes,
        max_replicas=max_replicas,
    )  # fmt: skip
    assert _as_row(bound) == expected


#: A node of the cluster's system pool: it advertises no GPU, so it comes as an other node.
SYSTEM = node("sys", {HOST: "sys", "pool": "system"})


@pytest.mark.parametrize(
    ("pod_spec", "expected"),
    [
        pytest.param(
            spreads(spread()),
            (2, SPREAD_RULE + "node sys (no GPU) is counted and takes none of its workers"),
            id="counted-though-no-worker-fits",
        ),
        pytest.param(
            spreads(spread(), nodeSelector={"pool": "x"}),
            (2, SPREAD, frozenset("a")),
            id="kept-out-by-the-node-selector",
        ),
        pytest.param(
            spreads(spread(nodeAffinityPolicy="Ignore"), nodeSelector={"pool": "x"}),
            (2, SPREAD_RULE + "node b is counted and takes none of its workers"),
            id="counted-when-node-affinity-is-ignored",
        ),
        pytest.param(
            spreads(spread(key="topology.kubernetes.io/zone")), None, id="other-keys-not-read"
        ),
    ],
)
def test_a_node_without_gpus_counts_for_a_spread_constraint(
    pod_spec: dict[str, Any], expected: tuple[Any, ...] | None
) -> None:
    """The scheduler counts a spread constraint's nodes by their labels and its two node
    policies, not by whether the pod fits: a system pool beside the GPU nodes holds none of
    the workers and so holds every GPU node at ``maxSkew``, unless the template keeps the
    pool out of the count."""
    bound = compute_max_workers_per_node(
        pod_spec, OWN, PEER, "team", stranger_labels=STRANGER, nodes=SPREAD_NODES[:2],
        max_replicas=16, other_nodes=[SYSTEM],
    )  # fmt: skip
    assert _as_row(bound) == expected

"""Which nodes may run a job's workers: the scheduler's node filters, read from the template.

Why this module exists: GPU clusters are rarely one pool. A platform keeps A100 and H100
nodes apart with labels, reserves nodes for inference with a taint, and a job picks its pool
with a ``nodeSelector`` or a required node affinity. Arbitration and the autoscaler's room
count GPUs per node; counted over every GPU node, they grant a job GPUs on nodes the
scheduler will never put its workers on: the workers stay Pending while the GPUs they could
use go to nobody, and a job whose template matches no node at all waits without a word.
The scheduler decides per pod with filter plugins; this module applies the ones a pod
template fixes (``NodeAffinity``: ``nodeSelector`` and
``requiredDuringSchedulingIgnoredDuringExecution``; ``TaintToleration``: ``NoSchedule`` and
``NoExecute`` taints against the tolerations; ``NodeUnschedulable``: cordoned nodes) to Node
objects, as the scheduler's own code
does (``k8s.io/component-helpers/scheduling/corev1``), so each job is counted on its own
nodes. Pure: dicts in, names and words out; checked against the real kube-scheduler on the
test-bed (``tests/e2e/test_e2e_node_pools.py``). The operator passes the pod spec admission
makes of the template (``daemons.common.AdmittedPodSpecs``), not the template itself: the
scheduler filters the admitted pod, which may carry tolerations the template lacks.

Two rules that depend on other pods are read, as they bound the job by itself
(:func:`compute_max_workers_per_node`): a required pod anti-affinity on
``kubernetes.io/hostname`` that selects the job's own workers (a team that wants each
worker's node, its NICs and its host memory, to itself) lets a node run one of them; a
topology spread constraint on the hostname that must hold (``DoNotSchedule``) lets a node run
``maxSkew`` of them where some node it counts never holds one (a tainted pool the job does
not tolerate counts, by the scheduler's default ``nodeTaintsPolicy: Ignore``, and so does a
pool of nodes without GPUs that the template does not exclude: known traps), and
``maxSkew`` more than the node it counts holding the fewest where the job may run on every
one (a bound that moves with the placement, which the arbiter applies as it places).
Counted as packed, such a job was planned more to a node than the scheduler lets run there:
the workers the plan put beside each other stayed Pending or went elsewhere, and a resize
planned on one node moved workers the scheduler then refused there.

Not read: other pod (anti-)affinity and topology spread (they depend on other jobs' pods or
on zones; the packing affinity trainscale adds is a preference), CPU and memory here (the
arbiter counts them itself), and ``preferred`` terms and ``ScheduleAnyway`` constraints,
which never exclude a node. The callers count no GPU on a cordoned node in any
case (a worker that tolerates the cordon is rare, and the node is being drained).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Taint effects that keep a pod off a node (``PreferNoSchedule`` only scores it lower).
BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
#: The taint a cordoned node (``spec.unschedulable``) stands for in the scheduler's
#: ``NodeUnschedulable`` filter: a pod tolerating it may still go there.
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


def _labels(node: Mapping[str, Any]) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def _name(node: Mapping[str, Any]) -> str:
    return str((node.get("metadata") or {}).get("name") or "")


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether one toleration tolerates one taint (``ToleratesTaint`` in Kubernetes):
    an empty effect matches every effect, an empty key every key; operator ``Exists``
    matches any value, ``Equal`` (the default) only the same value; any other operator
    nothing."""
    effect = toleration.get("effect") or ""
    if effect and effect != (taint.get("effect") or ""):
        return False
    key = toleration.get("key") or ""
    if key and key != (taint.get("key") or ""):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def untolerated_taint(
    pod_spec: Mapping[str, Any], node: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The node's first ``NoSchedule``/``NoExecute`` taint none of the pod's tolerations
    tolerates; None when the pod tolerates them all."""
    tolerations = pod_spec.get("tolerations") or []
    taints: list[Mapping[str, Any]] = (node.get("spec") or {}).get("taints") or []
    for taint in taints:
        if taint.get("effect") not in BLOCKING_EFFECTS:
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _compare(value: str | None, values: Sequence[str], greater: bool) -> bool:
    """``Gt``/``Lt``: the label and the one value both integers, compared."""
    if value is None or len(values) != 1:
        return False
    have, bound = _int(value), _int(values[0])
    if have is None or bound is None:
        return False
    return have > bound if greater else have < bound


_OPERATORS = {
    "In": lambda value, values: value is not None and value in values,
    "NotIn": lambda value, values: value is None or value not in values,
    "Exists": lambda value, values: value is not None,
    "DoesNotExist": lambda value, values: value is None,
    "Gt": lambda value, values: _compare(value, values, greater=True),
    "Lt": lambda value, values: _compare(value, values, greater=False),
}


def matches_requirement(requirement: Mapping[str, Any], values_by_key: Mapping[str, str]) -> bool:
    """One ``matchExpressions`` (or ``matchFields``) requirement against a node's labels
    (or fields): ``In``, ``NotIn`` (also true when the key is absent), ``Exists``,
    ``DoesNotExist``, ``Gt`` and ``Lt`` (both sides integers); an unknown operator matches
    nothing, as the apiserver would have refused it."""
    test = _OPERATORS.get(requirement.get("operator") or "")
    if test is None:
        return False
    value = values_by_key.get(requirement.get("key") or "")
    values = [str(v) for v in requirement.get("values") or []]
    return bool(test(None if value is None else str(value), values))


def matches_term(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """One ``nodeSelectorTerms`` entry: all its expressions and fields match. A term with
    neither matches no node (as in Kubernetes)."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    labels = _labels(node)
    node_fields = {"metadata.name": _name(node)}
    return all(matches_requirement(r, labels) for r in expressions) and all(
        matches_requirement(r, node_fields) for r in fields
    )


def _required_terms(pod_spec: Mapping[str, Any]) -> Sequence[Mapping[str, Any]] | None:
    """The required node affinity's terms; None when the pod has no such rule."""
    affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return None
    return list(required.get("nodeSelectorTerms") or [])


def _affinity_misfit(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    """The pod's ``nodeSelector`` entry or required node affinity ``node`` fails (the
    scheduler's NodeAffinity filter), named; None when it passes both."""
    labels = _labels(node)
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != str(value):
            return f"nodeSelector {key}={value}"
    terms = _required_terms(pod_spec)
    if terms is not None and not any(matches_term(t, node) for t in terms):
        return "required node affinity"
    return None


def explain_misfit(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    """Why the scheduler would not put a pod of ``pod_spec`` on ``node``, naming the field
    (``cordoned``, ``nodeSelector pool=a``, ``required node affinity``, ``taint
    k=v:NoSchedule``); None when the node passes every filter read here."""
    tolerations = pod_spec.get("tolerations") or []
    cordoned = (node.get("spec") or {}).get("unschedulable")
    if cordoned and not any(tolerates(t, UNSCHEDULABLE_TAINT) for t in tolerations):
        return "cordoned"
    misfit = _affinity_misfit(pod_spec, node)
    if misfit is not None:
        return misfit
    taint = untolerated_taint(pod_spec, node)
    if taint is not None:
        value = taint.get("value")
        shown = f"{taint.get('key')}={value}" if value else str(taint.get("key"))
        return f"taint {shown}:{taint.get('effect')}"
    return None


def compute_eligible_nodes(
    pod_spec: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]]
) -> frozenset[str]:
    """Names of the ``nodes`` a pod of ``pod_spec`` passes the filters on."""
    return frozenset(_name(n) for n in nodes if explain_misfit(pod_spec, n) is None)


#: How many nodes :func:`explain_no_node` names where the template admits only nodes without GPUs.
NAMED_NODES = 3


def explain_no_node(
    pod_spec: Mapping[str, Any],
    nodes: Iterable[Mapping[str, Any]],
    other_nodes: Iterable[Mapping[str, Any]] = (),
) -> str:
    """Why no node of ``nodes`` (the GPU nodes) takes the pod, in one line for status and
    events: each reason with how many nodes it excludes, most first, e.g. ``nodeSelector
    pool=a excludes 3 nodes; taint dedicated=infer:NoSchedule excludes 1``. Where the pod
    would pass the filters on some of ``other_nodes`` (nodes that advertise no GPU), it says
    so and names them: a pool whose GPUs the NVIDIA device plugin does not advertise (not
    installed there, or not running yet) is a common first-day cause, and a reason naming
    only the nodes the template excludes sends the reader to the wrong pool."""
    reasons = Counter(r for n in nodes if (r := explain_misfit(pod_spec, n)) is not None)
    parts = [
        f"{reason} excludes {count} node{'s' if count != 1 else ''}"
        for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    ]
    admitted = sorted(compute_eligible_nodes(pod_spec, other_nodes))
    if admitted:
        named = ", ".join(admitted[:NAMED_NODES]) + (", ..." if len(admitted) > NAMED_NODES else "")
        many = len(admitted) != 1
        parts.append(
            f"the {len(admitted)} node{'s' if many else ''} it may run on ({named}) "
            f"advertise{'' if many else 's'} no nvidia.com/gpu: is the NVIDIA device plugin "
            "running there?"
        )
    return "; ".join(parts) or "no node with nvidia.com/gpu is listed"


def scheduling_key(pod_spec: Mapping[str, Any]) -> str:
    """The pod spec's fields the filters read, as one string: jobs with the same key are
    admitted by the same nodes (a cluster pass computes each key's nodes once)."""
    node_affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    fields = (
        pod_spec.get("nodeSelector") or {},
        node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution"),
        pod_spec.get("tolerations") or [],
    )
    return json.dumps(fields, sort_keys=True, default=str)


#: The topology key of a node: an anti-affinity on it keeps pods off each other's nodes.
HOSTNAME_KEY = "kubernetes.io/hostname"
#: The label every namespace carries with its own name (selectable by namespaceSelector).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: The operators of a label selector's ``matchExpressions``.
_LABEL_OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` and ``matchExpressions``, all must hold)
    selects ``labels``. None selects nothing and ``{}`` everything, as in a pod affinity
    term; an operator a label selector may not use selects nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != str(value):
            return False
    for requirement in selector.get("matchExpressions") or []:
        if requirement.get("operator") not in _LABEL_OPERATORS:
            return False
        if not matches_requirement(requirement, labels):
            return False
    return True


def _term_namespaces_hold(term: Mapping[str, Any], namespace: str) -> bool:
    """Whether a pod affinity term looks at pods in ``namespace``: its ``namespaces`` and
    ``namespaceSelector`` together, the pod's own namespace when both are empty. A
    namespaceSelector is read against the namespace's name label only (the one label every
    namespace has; others are not known here)."""
    listed = term.get("namespaces") or []
    chosen = term.get("namespaceSelector")
    if not listed and chosen is None:
        return True
    if namespace in listed:
        return True
    return chosen is not None and selects(chosen, {NAMESPACE_NAME_LABEL: namespace})


@dataclass(frozen=True)
class NodeBound:
    """How many of a job's workers one node may run by its template's own rules, and which
    rule says so (in the words the job's status and events then use). With ``domains``
    (a spread constraint where the job may have workers on every node it counts) the bound
    moves: a node may run ``workers`` more than the one of ``domains`` holding the fewest."""

    workers: int
    rule: str
    domains: frozenset[str] | None = None


#: The rule a required pod anti-affinity to the job's own workers is named by.
ANTI_AFFINITY_RULE = "its required podAntiAffinity"


def _anti_affinity_bound(
    pod_spec: Mapping[str, Any],
    own_labels: Mapping[str, str],
    peer_labels: Mapping[str, str],
    namespace: str,
) -> NodeBound | None:
    anti = (pod_spec.get("affinity") or {}).get("podAntiAffinity") or {}
    for term in anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []:
        if term.get("topologyKey") != HOSTNAME_KEY or not _term_namespaces_hold(term, namespace):
            continue
        if not _selects_peer(term, own_labels, peer_labels):
            continue
        unlike = {k: own_labels[k] for k in term.get("mismatchLabelKeys") or [] if k in own_labels}
        if any(peer_labels.get(k) == v for k, v in unlike.items()):
            continue
        return NodeBound(1, ANTI_AFFINITY_RULE)
    return None


def _selects_peer(
    rule: Mapping[str, Any], own_labels: Mapping[str, str], other_labels: Mapping[str, str]
) -> bool:
    """Whether a pod affinity term or spread constraint of a pod labelled ``own_labels``
    selects a pod labelled ``other_labels``: its ``labelSelector``, and its
    ``matchLabelKeys`` with the values the pod itself has (keys it lacks are ignored, as the
    apiserver merges only present ones)."""
    if not selects(rule.get("labelSelector"), other_labels):
        return False
    mine = {k: own_labels[k] for k in rule.get("matchLabelKeys") or [] if k in own_labels}
    return all(other_labels.get(k) == v for k, v in mine.items())


def _spread_domain(constraint: Mapping[str, Any], pod_spec: Mapping[str, Any], node: Any) -> bool:
    """Whether the scheduler counts ``node`` as a domain of a spread constraint: its
    ``nodeAffinityPolicy`` (default ``Honor``: the pod's nodeSelector and required node
    affinity) and ``nodeTaintsPolicy`` (default ``Ignore``: a taint the pod does not
    tolerate keeps the node counted)."""
    if (
        constraint.get("nodeAffinityPolicy", "Honor") == "Honor"
        and _affinity_misfit(pod_spec, node) is not None
    ):
        return False
    return not (
        constraint.get("nodeTaintsPolicy") == "Honor"
        and untolerated_taint(pod_spec, node) is not None
    )


def _spread_bound(
    pod_spec: Mapping[str, Any],
    own_labels: Mapping[str, str],
    peer_labels: Mapping[str, str],
    stranger_labels: Mapping[str, str] | None,
    nodes: Sequence[Mapping[str, Any]],
    max_replicas: int | None,
    other_nodes: Sequence[Mapping[str, Any]],
) -> NodeBound | None:
    hard = [
        c
        for c in pod_spec.get("topologySpreadConstraints") or []
        if c.get("whenUnsatisfiable") == "DoNotSchedule"
    ]
    keys = {str(c.get("topologyKey")) for c in hard}
    usable = compute_eligible_nodes(pod_spec, nodes)
    gpu_less = frozenset(_name(n) for n in other_nodes)
    found: NodeBound | None = None
    for constraint in hard:
        skew = _int(constraint.get("maxSkew"))
        if constraint.get("topologyKey") != HOSTNAME_KEY or skew is None or skew < 1:
            continue
        if not _selects_peer(constraint, own_labels, own_labels) or not _selects_peer(
            constraint, own_labels, peer_labels
        ):
            continue
        if stranger_labels is not None and _selects_peer(constraint, own_labels, stranger_labels):
            continue  # other jobs' pods count too: the counts are not the job's own
        domains = [
            n
            for n in (*nodes, *other_nodes)
            if keys <= _labels(n).keys() and _spread_domain(constraint, pod_spec, n)
        ]
        if not domains:
            continue
        idle = sorted(_name(n) for n in domains if _name(n) not in usable)
        rule = f"its topologySpreadConstraints: maxSkew {skew} on {HOSTNAME_KEY}"
        least = _int(constraint.get("minDomains"))
        if idle:
            why = " (no GPU)" if idle[0] in gpu_less else ""
            bound = NodeBound(skew, f"{rule}, and node {idle[0]}{why} is counted and takes "
                                    "none of its workers")  # fmt: skip
        elif least is not None and len(domains) < least:
            bound = NodeBound(skew, f"{rule}, and {len(domains)} nodes are counted, fewer than "
                                    f"its minDomains {least}")  # fmt: skip
        elif max_replicas is not None and max_replicas < len(domains):
            bound = NodeBound(skew, f"{rule}, and {len(domains)} nodes are counted, more than "
                                    "its maxReplicas")  # fmt: skip
        else:  # the job may have workers on every node counted: its bound moves with them
            bound = NodeBound(skew, rule, frozenset(_name(n) for n in domains))
        if found is None or _tighter(bound, found):
            found = bound
    return found


def _tighter(bound: NodeBound, than: NodeBound) -> bool:
    """Whether ``bound`` binds at least as hard as ``than``: fewer workers per node, a fixed
    bound before a moving one of the same size (which is never lower)."""
    return (bound.workers, bound.domains is not None) < (than.workers, than.domains is not None)


def compute_max_workers_per_node(
    pod_spec: Mapping[str, Any],
    own_labels: Mapping[str, str],
    peer_labels: Mapping[str, str],
    namespace: str,
    *,
    stranger_labels: Mapping[str, str] | None = None,
    nodes: Sequence[Mapping[str, Any]] = (),
    max_replicas: int | None = None,
    other_nodes: Sequence[Mapping[str, Any]] = (),
) -> NodeBound | None:
    """How many of a job's workers one node may run by the template's own rules, the
    tightest of two; None (no bound) where neither holds.

    - 1 where a required pod anti-affinity term on ``kubernetes.io/hostname`` selects the
      job's other workers (``peer_labels``: a second worker's labels, ``own_labels`` the
      first's, which ``matchLabelKeys`` and ``mismatchLabelKeys`` take their values from)
      in the job's ``namespace``.
    - ``maxSkew`` where a ``topologySpreadConstraints`` entry on the hostname with
      ``whenUnsatisfiable: DoNotSchedule`` selects the job's workers (itself and a peer)
      and no worker of another job made from the same template (``stranger_labels``), and
      some node it counts (``nodes``, as the scheduler picks them by the constraint's
      ``nodeAffinityPolicy`` and ``nodeTaintsPolicy``) always holds none of them: one its
      workers may not use (a tainted pool counted under the default ``nodeTaintsPolicy:
      Ignore``), or one left over because the nodes counted outnumber ``max_replicas``. The
      scheduler lets a node run at most ``maxSkew`` more matching pods than the emptiest
      node counted, so that node's zero bounds every node at ``maxSkew``. Where the job
      could have a worker on every node counted, the bound moves with its placement: the
      ``NodeBound`` then lists those nodes (``domains``), and a node may run ``maxSkew``
      more than the one of them holding the fewest. The scheduler counts nodes by labels
      and those two policies, not by whether a worker fits: ``other_nodes``, the nodes
      that advertise no GPU (a cluster's system or CPU pool), count too where the template
      does not keep them out, and hold none of the workers, so they fix the bound at
      ``maxSkew`` as an untolerated pool does. So does a ``minDomains`` above the number of
      nodes counted (the scheduler then takes the emptiest as holding none).

    Other topology keys (zones) are not read.
    """
    anti = _anti_affinity_bound(pod_spec, own_labels, peer_labels, namespace)
    spread = _spread_bound(
        pod_spec, own_labels, peer_labels, stranger_labels, nodes, max_replicas, other_nodes
    )
    if anti is None or spread is None:
        return anti or spread
    return spread if _tighter(spread, anti) else anti


def template_pod_spec(template: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec of a TrainingJob's ``spec.template`` (empty when it has none)."""
    return template.get("spec") or {}

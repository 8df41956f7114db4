"""Which node the arbitration plan holds for each worker a job creates next.

Why this module exists: cluster arbitration decides not only how many workers a job may run
but where (``status.arbitration.preferredNodes``, node name -> workers): new workers go to the
node that fits them best, away from the GPUs another job's workers will take back or an
arrival was promised. The default scheduler knows none of that (it scores nodes by CPU and
memory and by the packing preference), so a new worker used to land wherever the
scheduler liked, and the next arbitration pass found the GPUs it had planned for someone
else taken: a job needing a whole node stayed Queued beside two half-empty ones. The
reconcile loop therefore names each new worker's planned node as a preference on its pod,
and the cluster benchmark's simulated scheduler honours the same preference; both ask this
module which node that is, so they cannot disagree.

The plan counts every worker of the job, the running ones included. A worker that exists
(bound, or still Pending with a planned node of its own) takes its node's slot first; the
workers created next take the slots left, in index order: first on the nodes where the job
already has workers (it stays packed), then the node with the most slots left, then by name.
A worker for which the plan has no slot left gets no preference (None).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

# A Node's name is a DNS subdomain; a plan naming anything else (a hand-edited status) is
# ignored rather than written into a pod the apiserver would refuse.
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_NODE_NAME_LENGTH = 253


def is_node_name(name: object) -> bool:
    """Whether ``name`` can be a Node's name (a DNS subdomain of at most 253 characters)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NODE_NAME_LENGTH
        and _NODE_NAME.match(name) is not None
    )


def read_plan(preferred_nodes: object) -> dict[str, int]:
    """``status.arbitration.preferredNodes`` as a plan: the entries with a node name and a
    positive whole number of workers (anything else in a status dict is dropped)."""
    if not isinstance(preferred_nodes, Mapping):
        return {}
    plan: dict[str, int] = {}
    for node, workers in preferred_nodes.items():
        whole = isinstance(workers, int) and not isinstance(workers, bool)
        if is_node_name(node) and whole and workers > 0:
            plan[node] = workers
    return plan


def assign_planned_nodes(
    plan: Mapping[str, int], existing: Sequence[str | None], new: int
) -> list[str | None]:
    """The planned node of each of ``new`` workers created next, in index order.

    Args:
        plan: node name -> workers of the job (:func:`read_plan`).
        existing: the node of each worker that exists and stays (its bound node, or the
            planned node of a Pending one; None when it has neither).
        new: how many workers are created now.
    """
    left = Counter({node: workers for node, workers in plan.items() if workers > 0})
    here: Counter[str] = Counter()
    for node in existing:
        if node is None:
            continue
        here[node] += 1
        if left[node] > 0:
            left[node] -= 1
    out: list[str | None] = []
    for _ in range(new):
        open_nodes = [node for node, slots in left.items() if slots > 0]
        if not open_nodes:
            out.append(None)
            continue
        node = min(open_nodes, key=lambda n: (-here[n], -left[n], n))
        left[node] -= 1
        here[node] += 1
        out.append(node)
    return out


def choose_moves(
    plan: Mapping[str, int], existing: Sequence[str | None], movable: Sequence[bool]
) -> list[int]:
    """Which workers a resize moves to the nodes the plan holds for them (reconcile rule 11):
    positions in ``existing`` (each worker's node, bound or planned, in index order; None:
    neither) of the workers that find no slot left on their node, the lowest indexes taking
    the slots first, that may move (``movable``), no more of them than the plan has slots
    left elsewhere."""
    slots = Counter({node: workers for node, workers in plan.items() if workers > 0})
    off: list[int] = []
    for i, node in enumerate(existing):
        if node is not None and slots[node] > 0:
            slots[node] -= 1
        elif movable[i]:
            off.append(i)
    return off[: sum(slots.values())]

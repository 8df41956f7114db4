"""CPU and memory a pod asks for, read as the scheduler reads them.

Why this module exists: cluster arbitration places workers on GPUs, but the scheduler also
needs the CPU and memory a worker requests on its node. A job whose workers ask for more CPU
per GPU than a node has left can run fewer workers there than its free GPUs suggest, and the
arbiter, which places every job's workers against each node's CPU and memory left, must know
it (:attr:`~trainscale.operator.autoscaling.arbiter.JobDemand.cpu_millis_per_worker`).
Both the nodes' allocatable and the pods' requests are Kubernetes quantities (``500m``,
``2``, ``64Gi``, ``1e3``); this module parses them and sums a pod's requests the way the
scheduler does, with no client and no clock.

A pod's request of a resource is the larger of its containers' sum (plus its restartable
init containers, the sidecars, which run beside them) and each init container's own request
(init containers run one at a time, before the others). A container's request is its
``requests`` entry, or its ``limits`` entry when it sets no request (the API server defaults
the one to the other). Pod ``overhead`` is added when set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CPU = "cpu"
MEMORY = "memory"

_SUFFIXES = {
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)


def parse_quantity(value: object) -> float:
    """A Kubernetes quantity (``"500m"``, ``2``, ``"64Gi"``, ``"1e3"``) as a number.

    Raises:
        ValueError: not a quantity (naming it).
    """
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _QUANTITY.match(str(value).strip())
        if match is None:
            raise ValueError(f"not a quantity: {value!r}")
        digits, exponent, suffix = match.groups()
        number = float(digits + (exponent or "")) * _SUFFIXES[suffix or ""]
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"not a quantity: {value!r}")
    return number


@dataclass(frozen=True)
class Requests:
    """What a pod asks for: CPU in millicores, memory in bytes (0 when it asks none)."""

    cpu_millis: int = 0
    memory_bytes: int = 0


def _amount(container: Mapping[str, Any], resource: str) -> float:
    resources = container.get("resources") or {}
    value = (resources.get("requests") or {}).get(resource)
    if value is None:
        value = (resources.get("limits") or {}).get(resource)
    return 0.0 if value is None else parse_quantity(value)


def _pod_amount(pod_spec: Mapping[str, Any], resource: str) -> float:
    main = sum(_amount(c, resource) for c in pod_spec.get("containers") or [])
    init = 0.0
    for container in pod_spec.get("initContainers") or []:
        if container.get("restartPolicy") == "Always":  # a sidecar: runs beside the others
            main += _amount(container, resource)
        else:
            init = max(init, _amount(container, resource))
    overhead = (pod_spec.get("overhead") or {}).get(resource)
    return max(main, init) + (parse_quantity(overhead) if overhead is not None else 0.0)


def compute_pod_requests(pod_spec: Mapping[str, Any]) -> Requests:
    """The CPU and memory the scheduler reserves for a pod of ``pod_spec`` (module doc).

    Raises:
        ValueError: a CPU or memory quantity that is not one.
    """
    return Requests(
        cpu_millis=math.ceil(_pod_amount(pod_spec, CPU) * 1000 - 1e-9),
        memory_bytes=math.ceil(_pod_amount(pod_spec, MEMORY) - 1e-9),
    )

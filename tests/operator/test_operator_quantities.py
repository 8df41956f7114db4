"""Kubernetes quantities and a pod's CPU and memory requests, as the scheduler reads them.

Covers: decimal and binary suffixes, exponents, plain numbers; refused: words, negatives,
unknown suffixes, booleans; a pod's request: its containers' sum, limits where no request,
the largest init container when it is larger, sidecars (restartable init containers) added,
the pod overhead added; nothing asked is zero.
"""

from __future__ import annotations

from typing import Any

import pytest

from trainscale.operator.api.quantities import Requests, compute_pod_requests, parse_quantity


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500m", 0.5),
        ("2", 2.0),
        (4, 4.0),
        (0.25, 0.25),
        ("1.5", 1.5),
        (".5", 0.5),
        ("64Gi", 64 * 2**30),
        ("100Mi", 100 * 2**20),
        ("1k", 1000.0),
        ("3G", 3e9),
        ("1e3", 1000.0),
        ("2E2", 200.0),
        ("1E", 1e18),
        ("250u", 250e-6),
        (" 8 ", 8.0),
    ],
)
def test_quantities_parse_as_kubernetes_writes_them(value: Any, expected: float) -> None:
    assert parse_quantity(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["abc", "-1", "1Zi", "", "1.2.3", "Gi", True, float("inf")])
def test_a_value_that_is_not_a_quantity_is_refused_by_name(value: Any) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(value)


def _container(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None,
               **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"name": "c", "resources": {"requests": requests or {}, "limits": limits or {}},
            **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("pod_spec", "expected"),
    [
        pytest.param(
            {
                "containers": [
                    _container({"cpu": "2", "memory": "8Gi"}),
                    _container({"cpu": "500m"}),
                ]
            },
            Requests(2500, 8 * 2**30),
            id="containers-summed",
        ),
        pytest.param(
            {"containers": [_container(limits={"cpu": "4", "memory": "1Gi"})]},
            Requests(4000, 2**30),
            id="limits-where-no-request",
        ),
        pytest.param(
            {"containers": [_container({"cpu": "1"}, {"cpu": "4"})]},
            Requests(1000, 0),
            id="the-request-not-the-limit",
        ),
        pytest.param(
            {
                "containers": [_container({"cpu": "1"})],
                "initContainers": [_container({"cpu": "3"}), _container({"cpu": "2"})],
            },
            Requests(3000, 0),
            id="largest-init-container",
        ),
        pytest.param(
            {
                "containers": [_container({"cpu": "1"})],
                "initContainers": [_container({"cpu": "2"}, restartPolicy="Always")],
            },
            Requests(3000, 0),
            id="sidecar-added",
        ),
        pytest.param(
            {"containers": [_container({"memory": "1Gi"})], "overhead": {"memory": "100Mi"}},
            Requests(0, 2**30 + 100 * 2**20),
            id="overhead-added",
        ),
        pytest.param({"containers": [{"name": "c"}]}, Requests(0, 0), id="nothing-asked"),
        pytest.param(
            {"containers": [_container({"cpu": "0.1"})]},
            Requests(100, 0),
            id="no-float-rounding-up",
        ),
    ],
)
def test_a_pods_requests_are_what_the_scheduler_reserves(
    pod_spec: dict[str, Any], expected: Requests
) -> None:
    assert compute_pod_requests(pod_spec) == expected

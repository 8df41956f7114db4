"""The apiserver's own request counters, by verb and resource.

Why this module exists: what the operator costs the control plane is best read where the
requests land — ``apiserver_request_total`` on the apiserver's /metrics counts every
client's requests — and both the end-to-end tests (an idle job makes no request) and
``benchmarks/operator_scale.py`` (requests per job and second) read it the same way.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "apiserver_request_total"


def parse_request_counts(text: str) -> dict[tuple[str, str], float]:
    """``apiserver_request_total`` from the text of the apiserver's /metrics, summed by
    (verb, resource[/subresource])."""
    lines = "\n".join(line for line in text.splitlines() if line.startswith(REQUESTS + "{"))
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(lines + "\n"):
        for sample in family.samples:
            labels = sample.labels
            resource = "/".join(filter(None, (labels.get("resource"), labels.get("subresource"))))
            key = (labels.get("verb", ""), resource)
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts

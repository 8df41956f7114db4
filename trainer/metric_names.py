"""Names of every Prometheus metric the trainer exports, defined once.

Why this module exists: the trainer's exporter, the operator's PromQL and the Grafana
dashboard must agree on each name, so all three import them from here. It imports nothing
(no torch, no prometheus_client) so the operator can use it.

Names follow Prometheus conventions: a ``trainscale_trainer_`` prefix, the unit last
(``_seconds``, ``_ratio``), ``_total`` for counters.
"""

from __future__ import annotations

PREFIX = "trainscale_trainer_"

# Counter: training samples this worker has processed (optimizer-step granularity).
# rate() of the sum over a job's workers is the job's throughput in samples per second.
SAMPLES_TOTAL = PREFIX + "samples_total"

"""The operator-trainer contract, torch-free: what both sides must agree on, written once.

* :mod:`.environment` — the ``PET_*`` and ``TRAINSCALE_*`` variables of a worker pod, and the
  metrics port;
* :mod:`.rendezvous` — the c10d rendezvous settings (``PET_RDZV_CONF``, keep-alive, the store's
  port and script);
* :mod:`.naming` — worker pod names and the pattern that matches them;
* :mod:`.metric_names` — the trainer's Prometheus metrics;
* :mod:`.audit` — the sample audit log's files and their reader (tests, benchmarks).

It is the only part of the trainer the operator imports, and it imports nothing but the
standard library."""

"""Built-in example tasks: ``synthetic`` (no data, for tests and benchmarks) and ``digits``
(scikit-learn's bundled handwritten digits, offline, with an accuracy to check)."""

"""What the operator shows about itself: its Prometheus metric names (defined once), the
metrics registry and /metrics endpoint, and the Grafana dashboard declared as code."""

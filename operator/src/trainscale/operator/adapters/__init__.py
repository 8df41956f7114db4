"""I/O adapters: every call to the Kubernetes API and the Prometheus HTTP API goes through a
module here (PromQL text is built here too, next to the client that sends it), so the
decisions stay pure and the daemons stay thin."""

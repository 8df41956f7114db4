"""trainscale's Kubernetes operator: the TrainingJob API, the kopf handlers that reconcile it,
the pure builders and autoscaling policy they call, and the ``trainscale`` CLI.

Nothing in this package imports torch: the operator runs in a small image next to the
control plane, far from any GPU.
"""

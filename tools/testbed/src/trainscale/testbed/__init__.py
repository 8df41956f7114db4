"""Dev tooling, not the product: a real Kubernetes control plane on this machine (etcd,
kube-apiserver, scheduler, controller-manager, kwok GPU nodes) for tests, demos and
benchmarks, and a simulated job's metrics for nodes that run nothing. Installed by the
``dev`` set-up only; the operator's wheel, image and CLI carry none of it."""

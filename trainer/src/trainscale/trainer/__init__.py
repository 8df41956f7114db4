"""trainscale's elastic DDP runtime: runs inside each worker pod under torchrun, checkpoints,
resumes at any world size and exports Prometheus metrics.

Importing this package is cheap and torch-free (the operator reads
:mod:`trainscale.trainer.contract.metric_names`); torch is imported only by the modules that train.
"""

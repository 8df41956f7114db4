"""Integrations with training frameworks that drive their own loop (PyTorch Lightning, Hugging
Face ``Trainer``), each an optional extra (``trainscale[lightning]``, ``trainscale[hf]``).

Why this package exists: most users do not write their training loop; they hand a model to a
framework whose sampler assumes the same world size on resume. Each module here plugs the
runtime's guarantees (exact data order at any world size, coordinated stop with a checkpoint on
SIGTERM, the policy's metrics) into one framework, through the glue in :mod:`._common`. A
framework is imported only by its own module, so ``trainscale.trainer`` imports without any.
"""

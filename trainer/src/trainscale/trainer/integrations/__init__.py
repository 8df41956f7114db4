"""Plug-ins that give training loops of other frameworks the trainer's guarantees.

Why this package exists: most users train through a framework's own loop (Hugging Face
``Trainer``, PyTorch Lightning) rather than ``trainscale-train --task`` or a hand-written
torchrun loop. Each module here adapts one framework (imported only inside that module, an
optional extra such as ``trainscale[hf]``); :mod:`._common` is the framework-free glue they
share. Importing this package imports no framework.
"""

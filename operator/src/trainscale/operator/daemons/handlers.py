"""Registers every kopf handler of the operator: importing this module is what ``kopf run -m``
and ``trainscale operator`` do.

Why this module exists: kopf registers handlers as a side effect of importing their modules;
one module that imports them all gives the process entry point and the tests one name to load.
"""

from trainscale.operator.daemons import autoscale, reconcile, startup

__all__ = ["autoscale", "reconcile", "startup"]

"""The controller's pure core: what a TrainingJob owns (builders), what a reconcile pass
should create, delete and report (the plan), and the condition helpers both loops share.
Nothing here performs I/O; the kopf daemons in :mod:`trainscale.operator.daemons` apply it."""

"""Entry points: the ``trainscale`` command line and the operator process it starts."""

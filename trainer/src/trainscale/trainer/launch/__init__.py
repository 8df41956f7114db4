"""Starting workers: the ``trainscale-train`` command, the fast-resize elastic agent, the
forkserver preload, and local multi-worker jobs with their own rendezvous store."""

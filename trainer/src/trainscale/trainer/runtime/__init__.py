"""The training runtime inside one worker process: the training loop, elastic state and
resume, the exact data order, batching, checkpoints, the task contract and metrics."""

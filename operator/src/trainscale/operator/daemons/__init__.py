"""kopf handlers and the per-job daemons: the thin layer that observes through the adapters,
calls the pure decisions and applies the result. Importing :mod:`.handlers` registers them."""

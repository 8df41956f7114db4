"""The operator-trainer contract, torch-free: the names both sides must agree on (environment
variables, metric names, rendezvous settings). It is the only part of the trainer the operator
imports, and it imports nothing but the standard library."""

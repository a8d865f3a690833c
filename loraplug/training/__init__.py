"""The training loop and its parts: optimiser and schedule, batch plans, weights on disk, metric sinks."""

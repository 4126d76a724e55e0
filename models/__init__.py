"""PyTorch side of sluice: model definitions, loading, the runner, and the demo models' training."""

"""Training entry points: Hydra config -> fitted, tested model and a run folder of results."""

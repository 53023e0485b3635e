"""Training: the loop's pieces (schedule, EMA, checkpoints, metrics, logging)."""

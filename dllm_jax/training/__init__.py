"""Training: optimizer, train step, checkpoints."""

"""absl entry points: train, sample."""

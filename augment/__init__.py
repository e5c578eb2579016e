"""Named deterministic image transforms and the random training pipeline."""

"""Checkpoint files: atomic save, weights-only reading with clear errors, strict model-state loading, RNG state, and which weights a checkpoint was chosen by."""

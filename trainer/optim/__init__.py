"""Optimizers (parameter groups) and learning-rate schedules, as registry options."""

"""What a run shows and writes as it goes and when it ends: callbacks (progress, log, metrics.csv, curves, TensorBoard), plots, tables, per-class reports."""

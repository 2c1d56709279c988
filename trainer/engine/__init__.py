"""The training loop and what it keeps: the Engine, step totals, run files and checkpoints on disk, resume, and the processes of a torchrun launch."""

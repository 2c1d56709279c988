"""A training run put together: the command line checked before Hydra, the config checked, the process set up, the parts assembled, the end-of-run report."""

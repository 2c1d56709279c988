"""A sweep's jobs read back, ranked and grouped over seeds, as tables, CSV files and a picture; the Hydra callback that reports every sweep."""

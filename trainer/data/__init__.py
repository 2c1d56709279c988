"""Data from files or memory to batches: datasets, image files, transforms, loaders, and the batch bookkeeping of loaders."""

"""What a run can be asked to do: the schema of every option (Hydra's ConfigStore) and the registries that map option names to builders. Imports nothing heavy."""

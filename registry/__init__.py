"""The system's state: database rows (jobs, datasets, model versions, aliases, events) and the artifact store."""

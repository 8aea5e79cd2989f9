"""MLflow layout: sweep run, nested trial runs, curves keyed by steps, artifacts."""

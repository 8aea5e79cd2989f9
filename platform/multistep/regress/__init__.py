"""Regression jobs: compare.py compares a results table with a baseline (pure); baseline.py finds, promotes and
checks against the baseline sweep run in MLflow (`multistep regress`)."""

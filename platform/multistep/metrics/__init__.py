"""Evaluation metrics (pure NumPy/SciPy/PyTorch; no Ray or MLflow)."""

from multistep.metrics.frechet import frechet_distance, gaussian_stats
from multistep.metrics.distances import paired_l2, sliced_wasserstein

__all__ = ["frechet_distance", "gaussian_stats", "sliced_wasserstein", "paired_l2"]

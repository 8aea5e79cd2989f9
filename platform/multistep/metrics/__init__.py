"""Evaluation metrics (pure NumPy/SciPy/PyTorch; no Ray or MLflow)."""

from multistep.metrics.distances import paired_l2, sliced_wasserstein
from multistep.metrics.extractors import Extractor, make_extractor
from multistep.metrics.frechet import frechet_distance, gaussian_stats
from multistep.metrics.kid import bootstrap_fd_ci, kid
from multistep.metrics.stats import StatsAccumulator, reference_stats

__all__ = [
    "frechet_distance",
    "gaussian_stats",
    "sliced_wasserstein",
    "paired_l2",
    "kid",
    "bootstrap_fd_ci",
    "StatsAccumulator",
    "reference_stats",
    "Extractor",
    "make_extractor",
]

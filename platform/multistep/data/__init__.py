"""Datasets: analytic Gaussian mixtures (and, later, toy 2D, digits, Parquet image shards)."""

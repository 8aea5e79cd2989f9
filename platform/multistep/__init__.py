"""multistep: distil diffusion models into few-step generators and compare methods at scale."""

__version__ = "0.1.0"

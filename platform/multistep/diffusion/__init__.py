"""Diffusion maths shared by every method (pure PyTorch; no Ray or MLflow)."""

from multistep.diffusion.ddim import addim_step, ddim_step, inv_ddim
from multistep.diffusion.schedules import Schedule, make_schedule

__all__ = ["Schedule", "make_schedule", "ddim_step", "inv_ddim", "addim_step"]

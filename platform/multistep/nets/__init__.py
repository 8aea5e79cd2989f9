"""Denoisers: f(z, t) -> x_hat. Networks hold no training logic."""

"""Ray Tune + Ray Train orchestration of sweeps (the only package that imports Ray Tune)."""

"""Distillation methods behind one interface (see base.Method). No Ray or MLflow imports."""

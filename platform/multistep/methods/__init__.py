"""Distillation methods behind one interface (see base.Method). No Ray or MLflow imports.

Each method lives in one file, which registers its config options, builder and label (base.register);
importing this package registers the built-in ones.
"""

from multistep.methods import dmd, flowmap, mcm, progressive, rcm, scm, tract  # noqa: F401  (registration)
from multistep.methods.base import METHODS, MethodSpec, OptionError, method_label, register

__all__ = ["METHODS", "MethodSpec", "OptionError", "method_label", "register"]

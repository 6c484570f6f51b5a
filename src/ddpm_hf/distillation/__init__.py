"""Few-step students distilled from a trained DDPM (``ddpm-hf distill``): the method's maths (``consistency``), the
run's settings (``config``), its loop (``loop``) and the default command's two phases (``phases``).

The names below are imported on first use (PEP 562): the command line reads the settings' choices without torch."""

import importlib

_EXPORTS = {"config": ("METHODS", "SOLVERS", "DistillConfig", "teacher_training_args"), "phases": ("distill",)}
__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name):
    for module, names in _EXPORTS.items():
        if name in names:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

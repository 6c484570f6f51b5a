"""``ddpm-hf train``: the training command (its flags and entry point live in ddpm_hf.training)."""

from ..training import main

__all__ = ["main"]

"""Training (Ho et al. 2020, Algorithm 1, with the Improved DDPM options): ``config`` (TrainConfig, every setting
checked once), ``loop`` (``train``: the loop, read top to bottom), ``lifecycle`` (the output folder, resume, signals,
one ``checkpoint(reason)``), ``checkpoints`` (train_unconditional.py's checkpoint format, verified before a resume),
``flat_parameters`` (one flat buffer for AdamW, clipping and the EMA) and ``export`` (pipeline, samples, card, push).
The flags live in the CLI (ddpm_hf.cli.train)."""

from .config import TrainConfig

__all__ = ["TrainConfig", "micro_batches", "train"]


def __getattr__(name):  # the loop imports torch: only when it is used (PEP 562), so `train --help` stays light
    if name in ("micro_batches", "train"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

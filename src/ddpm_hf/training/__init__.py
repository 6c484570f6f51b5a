"""Training (Ho et al. 2020, Algorithm 1, with the Improved DDPM options): ``config`` (TrainConfig, every setting
checked once), ``loop`` (``train``: the loop, read top to bottom), ``lifecycle`` (the output folder, resume, signals,
one ``checkpoint(reason)``), ``checkpoints`` (train_unconditional.py's checkpoint format, verified before a resume),
``flat_parameters`` (one flat buffer for AdamW, clipping and the EMA) and ``export`` (pipeline, samples, card, push).
The flags live in the CLI (ddpm_hf.cli.train)."""

from .config import TrainConfig
from .loop import micro_batches, train

__all__ = ["TrainConfig", "micro_batches", "train"]

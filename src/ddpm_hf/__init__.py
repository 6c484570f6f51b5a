"""ddpm-hf: a DDPM scheduler, likelihood, UNet presets and pipeline written from the equations, for diffusers."""

from .scheduling_ddpm_hf import DDPMHFScheduler

__version__ = "0.1.0"

__all__ = ["DDPMHFScheduler", "__version__"]

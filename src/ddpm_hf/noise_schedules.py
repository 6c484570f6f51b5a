"""Noise schedules diffusers' DDPMScheduler has no name for, as explicit betas: a run stores them in its scheduler
config as ``trained_betas``, which DDPMScheduler and DDPMHFScheduler both take, so the model loads in diffusers as
it is.

The shifted cosine (Hoogeboom, Heek & Salimans 2023, "simple diffusion", sec. 3.1): the cosine schedule's log
signal-to-noise ratio moved by a constant, logSNR_shifted(t) = logSNR_cosine(t) + shift. Their rule for a d x d
image is shift = 2 log(64 / d), from a cosine tuned at 64 x 64: at higher resolution neighbouring pixels average the
noise away, so a larger image needs more noise at the same t (a negative shift), and by the same argument a smaller
one less (positive).
"""

import math

from .scheduling_ddpm_hf import betas_from_alphabar_fn, cosine_alphabar


def shifted_cosine_alphabar(u, shift, s=0.008):
    """alphabar(u) whose logit is the cosine schedule's (Nichol & Dhariwal eq. 17, normalised by f(0)) plus
    ``shift``: sigmoid(logSNR_cosine(u) + shift), logSNR = log(alphabar / (1 - alphabar)) (Hoogeboom et al. 2023,
    sec. 3.1). u in [0, 1]; shift 0 is the cosine schedule."""
    alphabar = min(cosine_alphabar(u, s) / cosine_alphabar(0.0, s), 1.0)
    if alphabar <= 0.0:
        return 0.0
    if alphabar >= 1.0:
        return 1.0
    log_snr = math.log(alphabar) - math.log1p(-alphabar) + shift
    return 1.0 / (1.0 + math.exp(-log_snr)) if log_snr > -700 else 0.0


def shifted_cosine_betas(num_train_timesteps, shift, max_beta=0.999):
    """beta_1..beta_T (float32, shape (T,)) of the shifted cosine: beta_t = 1 - alphabar(t/T) / alphabar((t-1)/T),
    capped at ``max_beta`` as the cosine schedule is (Nichol & Dhariwal sec. 3.2)."""
    return betas_from_alphabar_fn(lambda u: shifted_cosine_alphabar(u, shift), num_train_timesteps, max_beta)


def resolution_shift(resolution, base=64):
    """Hoogeboom et al.'s shift for a ``resolution`` x ``resolution`` image: 2 log(base / resolution)."""
    return 2.0 * math.log(base / resolution)

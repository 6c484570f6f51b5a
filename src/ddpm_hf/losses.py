"""Training losses: L_simple (Ho eq. 14) for each prediction type, min-SNR weighting, and L_hybrid (N&D sec. 3.1)."""

import math

import torch

from .likelihood import vlb_terms
from .scheduling_ddpm_hf import split_model_output


def training_target(scheduler, x_start, noise, timesteps):
    """What the network regresses onto: eps (Ho eq. 14), x_0 ("sample") or v = sqrt(alphabar_t) eps -
    sqrt(1 - alphabar_t) x_0 ("v_prediction")."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x_start
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x_start, noise, timesteps)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def snr(scheduler, timesteps):
    """SNR(t) = alphabar_t / (1 - alphabar_t), shape (B,): the scheduler's own (``DDPMHFScheduler.snr``), or for
    another scheduler (diffusers' DDPMScheduler) ours made from its config, so the arithmetic lives in one place."""
    if not hasattr(scheduler, "snr"):
        from .scheduling_ddpm_hf import DDPMHFScheduler

        scheduler = DDPMHFScheduler.from_config(scheduler.config)
    return scheduler.snr(timesteps)


def min_snr_weights(scheduler, timesteps, gamma):
    """Min-SNR-gamma loss weights (Hang et al. 2023), so that every prediction type weights the implied x_0 error by
    min(SNR, gamma): the eps-MSE equals SNR times the x0-MSE and the v-MSE equals (SNR + 1) times it, hence
    epsilon: min(SNR, gamma)/SNR; v_prediction: min(SNR, gamma)/(SNR + 1); sample: min(SNR, gamma)."""
    s = snr(scheduler, timesteps)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1)
    return clipped


def loss_weights(scheduler, timesteps, snr_gamma=None):
    """Per-image weights of the squared error in the target's space, shape (B,), or None for none.

    Without min-SNR: "sample" is weighted by SNR(t) = alphabar_t / (1 - alphabar_t), as diffusers'
    examples/unconditional_image_generation/train_unconditional.py does (``snr_weights = alpha_t / (1 - alpha_t)``):
    an x_0 error d implies the eps error sqrt(SNR) d (Ho eq. 4), so SNR * |x0_hat - x_0|^2 is Ho's L_simple (eq. 14) of
    the implied eps prediction. "epsilon" is L_simple itself; "v_prediction" (which train_unconditional.py does not
    offer) keeps its plain v-MSE. With ``snr_gamma``: the min-SNR weights (see ``min_snr_weights``), which for
    "sample" are min(SNR, gamma)."""
    if snr_gamma:
        return min_snr_weights(scheduler, timesteps, snr_gamma)
    if scheduler.config.prediction_type == "sample":
        return snr(scheduler, timesteps)
    return None


def diffusion_loss(scheduler, model_output, x_start, noisy, noise, timesteps, snr_gamma=None, vlb_weight=0.001):
    """The training loss of one batch and its per-image parts.

    L_simple = mean over pixels of (target - prediction)^2 (Ho eq. 14), per image weighted by ``loss_weights``:
    for "epsilon" the plain MSE; for "sample" the x_0 MSE times SNR(t), as in diffusers'
    examples/unconditional_image_generation/train_unconditional.py, which is exactly the eps-MSE (Ho eq. 14) of the
    implied eps_hat = (x_t - sqrt(alphabar_t) x0_hat) / sqrt(1 - alphabar_t) (Ho eq. 4); for "v_prediction" the plain
    v-MSE; with ``snr_gamma`` the min-SNR weights instead, min(SNR, gamma) times the implied x_0 MSE for every type.
    For learned variances (the model output has 2C channels) L_hybrid = L_simple + vlb_weight * L_vlb, where
    L_vlb = T * L_{t-1} in bits/dim, the one-sample estimate of the sum over t for uniform t, with the gradient
    stopped through the mean (N&D sec. 3.1; vlb_weight = 0.001).

    Returns:
        (loss scalar, per-image unweighted MSE in the target's space (B,) (for "epsilon" L_simple itself; the
        training loop logs it by timestep quartile), per-image L_vlb estimate in bits/dim (B,) or None)
    """
    prediction, var_channels = split_model_output(model_output, x_start.shape[1])
    target = training_target(scheduler, x_start, noise, timesteps)
    mse = (prediction.float() - target.float()).square().flatten(1).mean(1)
    weights = loss_weights(scheduler, timesteps, snr_gamma)
    weighted = mse if weights is None else mse * weights
    loss = weighted.mean()
    vlb = None
    if var_channels is not None:
        T = scheduler.config.num_train_timesteps
        dims = x_start[0].numel()
        terms = vlb_terms(scheduler, model_output.float(), x_start.float(), noisy.float(), timesteps,
                          clip_denoised=False, detach_mean=True)
        vlb = terms * (T / (dims * math.log(2.0)))
        loss = loss + vlb_weight * vlb.mean()
    return loss, mse.detach(), None if vlb is None else vlb.detach()

"""The variational bound of DDPM and bits per dimension (Ho et al. 2020 eq. 5, 6, 7, 13; Nichol & Dhariwal 2021).

This module holds the bound itself: the Gaussian KL, the discretized decoder, the prior term and the loop over t.
Every diffusion quantity it needs (q(x_t | x_0), the posterior, the model's p(x_{t-1} | x_t)) is the scheduler's
(``DDPMHFScheduler.q_mean_variance``, ``posterior_mean_variance``, ``p_mean_variance``, ``q_sample``), from its one
float64 table of the full chain. A diffusers ``DDPMScheduler`` is converted with ``from_config``, as the task
pipelines do. Timesteps are in code indexing (code index i = paper t - 1, so i = 0 is the decoder step). Tensors are
(B, C, H, W) images scaled to [-1, 1]; per-image results are (B,) in nats unless named ``*_bpd``.

At i = 0 the posterior variance betatilde_1 is 0 (Ho eq. 7), so the decoder uses betatilde_2 in its place, as the
DDPM and Improved DDPM reference code do (``posterior_log_variance_clipped``; see
``DDPMHFScheduler._full_chain_table``); sampling never uses that value because the last reverse step adds no noise.
"""

import math
from dataclasses import dataclass

import torch

from .scheduling_ddpm_hf import DDPMHFScheduler, split_model_output

LOG2 = math.log(2.0)


def as_ddpm_hf(scheduler):
    """``scheduler`` if it is a DDPMHFScheduler, else one with its config (diffusers' DDPMScheduler and ours share
    every config key: ``from_config`` swaps the two)."""
    return scheduler if isinstance(scheduler, DDPMHFScheduler) else DDPMHFScheduler.from_config(scheduler.config)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (closed form of the Gaussian KL used
    by the L_{t-1} terms of Ho eq. 5)."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log p(x) of the discretized Gaussian decoder over 256 bins of data in [-1, 1] (Ho eq. 13), elementwise.

    The bin of x is [x - 1/255, x + 1/255], widened to -inf at x = -1 and +inf at x = 1.

    Args:
        x: data at bin centres, values in [-1, 1].
        mean: decoder mean, broadcastable to x.
        log_scale: log of the decoder standard deviation, broadcastable to x.
    Returns:
        log probabilities in nats, x's shape, each <= 0.
    """
    inv_std = torch.exp(-log_scale)
    upper = (x - mean + 1.0 / 255) * inv_std
    lower = (x - mean - 1.0 / 255) * inv_std
    # log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - Phi(a)/Phi(b)) for a < b, taken on the side of the mean the bin
    # lies on (Phi(-a) - Phi(-b) on the right), so that deep-tail bins keep their tiny but exact mass.
    right = (x - mean) > 0
    hi = torch.where(right, -lower, upper)
    lo = torch.where(right, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    # the factor 1 - Phi(a)/Phi(b) = -expm1(log Phi(a) - log Phi(b)), floored at 1e-12 so that a bin narrower than the
    # dtype resolves never gives log(0)
    log_mass = log_hi + (-torch.expm1(torch.special.log_ndtr(lo) - log_hi)).clamp(min=1e-12).log()
    return torch.where(
        x < -0.999, torch.special.log_ndtr(upper), torch.where(x > 0.999, torch.special.log_ndtr(-lower), log_mass)
    )


def _sum_per_image(x):
    return x.flatten(1).sum(dim=1)


def prior_kl(scheduler, x_start):
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in nats (Ho eq. 5). Has no parameters to train."""
    scheduler = as_ddpm_hf(scheduler)
    t = torch.full((x_start.shape[0],), scheduler.config.num_train_timesteps - 1, dtype=torch.long)
    mean, var = scheduler.q_mean_variance(x_start, t)
    return _sum_per_image(normal_kl(mean, var.log().expand_as(mean), torch.zeros_like(mean), torch.zeros_like(mean)))


def vlb_terms(scheduler, model_output, x_start, x_t, t, clip_denoised=None, detach_mean=False):
    """The terms L_{t-1} of the bound (Ho eq. 5), per image in nats, for code timesteps t of shape (B,):
    KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) where t > 0, and the decoder
    L_0 = -log p_theta(x_0 | x_1) (Ho eq. 13) where t = 0.

    detach_mean: stop the gradient through the mean, keeping it through the variance (the L_vlb part of
    L_hybrid, Nichol & Dhariwal sec. 3.1).
    """
    scheduler = as_ddpm_hf(scheduler)
    if detach_mean:
        prediction, var_channels = split_model_output(model_output, x_t.shape[1])
        prediction = prediction.detach()
        model_output = prediction if var_channels is None else torch.cat([prediction, var_channels], dim=1)
    p = scheduler.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    true_mean, _, true_log_var = scheduler.posterior_mean_variance(x_start, x_t, t)
    kl = _sum_per_image(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]))
    decoder_nll = -_sum_per_image(discretized_gaussian_log_likelihood(x_start, p["mean"], 0.5 * p["log_variance"]))
    return torch.where(t.to(kl.device) == 0, decoder_nll, kl)


def vlb_term_at(model, scheduler, x_start, t, generator=None, class_labels=None, clip_denoised=None):
    """One Monte Carlo draw of the terms L_{t-1} (``vlb_terms``) at code timesteps t (B,): x_t ~ q(x_t | x_0) with
    fresh noise from ``generator`` (Ho eq. 4), the model's output at (x_t, t), the terms in nats, (B,) float64 on
    the CPU. The one place the bound's loop body is written (``bits_per_dim``, the stratified estimate)."""
    scheduler = as_ddpm_hf(scheduler)
    noise = torch.randn(x_start.shape, generator=generator, dtype=x_start.dtype).to(x_start.device)
    x_t = scheduler.q_sample(x_start, noise, t)
    out = model(x_t, t) if class_labels is None else model(x_t, t, class_labels=class_labels)
    out = out.sample if hasattr(out, "sample") else out
    return vlb_terms(scheduler, out, x_start, x_t, t, clip_denoised=clip_denoised).double().cpu()


class BoundStopped(Exception):
    """The bound's loop was asked to stop (its ``should_stop`` returned True) before it finished."""


@dataclass
class BitsPerDim:
    """The full T-step variational bound (Ho eq. 5) in bits per dimension, per image.

    total: (B,) = prior + sum of terms; prior: (B,) L_T; decoder: (B,) L_0; terms: (B, T) L_{t-1} for code index
    t = 0..T-1 (terms[:, 0] is the decoder).
    """

    total: torch.Tensor
    prior: torch.Tensor
    decoder: torch.Tensor
    terms: torch.Tensor


@torch.no_grad()
def bits_per_dim(model, scheduler, x_start, generator=None, clip_denoised=None, progress=True, class_labels=None,
                 should_stop=None):
    """Bits per dimension of images under the full T-step variational bound: L_vlb / (D ln 2), D = C*H*W (Ho eq. 5).

    For each t = T-1..0 one x_t ~ q(x_t | x_0) is drawn with fresh noise and the term L_{t-1} evaluated (Monte
    Carlo over x_t, exact in everything else).

    Args:
        model: callable (x_t, timesteps (B,) long) -> output tensor or an object with ``.sample`` (a UNet2DModel).
        scheduler: DDPMHFScheduler or diffusers DDPMScheduler; its prediction_type and variance_type are used.
        x_start: (B, C, H, W) images in [-1, 1] on the 256 levels {-1 + 2k/255}.
        generator: torch.Generator for the noise draws.
        progress: show a tqdm bar over the T timesteps.
        class_labels: (B,) long class ids of the images for a class-conditional model (called as
            ``model(x_t, t, class_labels=...)``): the bound is then the conditional one, on -log p(x_0 | y).
        should_stop: a callable asked before each of the T terms; when it returns True the bound stops with
            ``BoundStopped`` (a training run's SIGTERM during its end-of-run bound).
    """
    from tqdm.auto import tqdm

    if x_start.min() < -1 or x_start.max() > 1:
        raise ValueError("bits_per_dim expects images scaled to [-1, 1]")
    scheduler = as_ddpm_hf(scheduler)
    num_t = scheduler.config.num_train_timesteps
    batch, dims = x_start.shape[0], x_start[0].numel()
    terms = torch.zeros(batch, num_t, dtype=torch.float64)
    for i in tqdm(range(num_t - 1, -1, -1), desc="bits/dim", disable=not progress, leave=False):
        if should_stop is not None and should_stop():
            raise BoundStopped(f"stopped at t = {i} of the bound's {num_t} terms")
        t = torch.full((batch,), i, dtype=torch.long, device=x_start.device)
        terms[:, i] = vlb_term_at(model, scheduler, x_start, t, generator, class_labels, clip_denoised)
    prior = prior_kl(scheduler, x_start).double().cpu()
    scale = 1.0 / (dims * LOG2)
    terms_bpd = terms * scale
    return BitsPerDim(
        total=prior * scale + terms_bpd.sum(dim=1), prior=prior * scale, decoder=terms_bpd[:, 0], terms=terms_bpd
    )

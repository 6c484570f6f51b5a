"""The variational bound of DDPM and bits per dimension (Ho et al. 2020 eq. 5, 6, 7, 13; Nichol & Dhariwal 2021).

All functions take a scheduler (ours or diffusers' ``DDPMScheduler``: only ``config`` and ``alphas_cumprod`` are
read) and integer timesteps in code indexing (code index i = paper t - 1, so i = 0 is the decoder step).
Tensors are (B, C, H, W) images scaled to [-1, 1]; per-image results are (B,) in nats unless named ``*_bpd``.

Variances follow the scheduler's ``variance_type``. At i = 0 the posterior variance betatilde_1 is 0 (Ho eq. 7), so
the decoder uses betatilde_2 in its place, as the DDPM and Improved DDPM reference code do (``posterior log variance
clipped``); sampling never uses that value because the last reverse step adds no noise.
"""

import math
from dataclasses import dataclass

import torch

from .scheduling_ddpm_hf import (
    model_log_variance,
    posterior_coefficients,
    q_sample_with,
    split_model_output,
    x0_coefficients,
    x0_from_output,
)

LOG2 = math.log(2.0)


@dataclass
class DiffusionTables:
    """Per-timestep float64 tables of the full T-step chain (code index i = paper t - 1), each of shape (T,)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor
    large_log_variance: torch.Tensor

    @classmethod
    def from_scheduler(cls, scheduler):
        """Build the tables from the scheduler's float32 alphabar (the values it trains and samples with):
        beta_t, betatilde_t and the posterior mean coefficients of Ho eq. 7 by ``posterior_coefficients`` with
        alphabar_{t-1} (alphabar_0 = 1), in float64; log betatilde_t with betatilde_2 in place of betatilde_1 = 0, and
        the "fixed_large" log variance log beta_t with the same betatilde_2 at t = 1 (improved-diffusion's)."""
        ab = scheduler.alphas_cumprod.double().cpu()
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        betas, post_var, coef_x0, coef_xt = posterior_coefficients(ab, ab_prev)
        clipped = torch.cat([post_var[1:2], post_var[1:]]) if len(ab) > 1 else betas.clone()
        return cls(
            betas=betas,
            alphas_cumprod=ab,
            posterior_variance=post_var,
            posterior_log_variance_clipped=clipped.log(),
            posterior_mean_coef_x0=coef_x0,
            posterior_mean_coef_xt=coef_xt,
            large_log_variance=torch.cat([post_var[1:2], betas[1:]]).log() if len(ab) > 1 else betas.log(),
        )


def _tables(scheduler):
    tables = getattr(scheduler, "_ddpm_hf_likelihood_tables", None)
    if tables is None or not torch.equal(tables.alphas_cumprod, scheduler.alphas_cumprod.double().cpu()):
        tables = DiffusionTables.from_scheduler(scheduler)
        scheduler._ddpm_hf_likelihood_tables = tables
    return tables


def _gather(table, t, like):
    """table[t] as ``like``'s dtype and device, shaped (B, 1, 1, ...) to broadcast against ``like``."""
    return table.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def q_mean_variance(scheduler, x_start, t):
    """Mean and variance of q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I) (Ho eq. 4).

    Returns:
        (mean of x_start's shape, variance of shape (B, 1, 1, 1)).
    """
    ab = _gather(_tables(scheduler).alphas_cumprod, t, x_start)
    return ab.sqrt() * x_start, 1 - ab


def q_sample(scheduler, x_start, t, noise):
    """A draw x_t ~ q(x_t | x_0) with the given eps (Ho eq. 4, the scheduler module's ``q_sample_with``) from the
    float64 alphabar table, cast to x_start's dtype. t: (B,) code timesteps."""
    ab = _gather(_tables(scheduler).alphas_cumprod, t, x_start.double())
    return q_sample_with(x_start, noise, ab.sqrt().to(x_start.dtype), (1 - ab).sqrt().to(x_start.dtype))


def posterior_mean_variance(scheduler, x_start, x_t, t):
    """q(x_{t-1} | x_t, x_0) = N(mutilde_t(x_t, x_0), betatilde_t I) (Ho eq. 6, 7).

    Returns:
        (mean of x_t's shape, variance (B,1,1,1), log variance clipped at i = 0 (B,1,1,1)).
    """
    tb = _tables(scheduler)
    mean = _gather(tb.posterior_mean_coef_x0, t, x_t) * x_start + _gather(tb.posterior_mean_coef_xt, t, x_t) * x_t
    return mean, _gather(tb.posterior_variance, t, x_t), _gather(tb.posterior_log_variance_clipped, t, x_t)


def predict_x0(scheduler, model_output, x_t, t):
    """x_0 implied by the model output for the scheduler's prediction_type (Ho eq. 15 for epsilon; the output itself
    for "sample"): the scheduler module's ``x0_from_output`` with the float64 coefficients of ``x0_coefficients``.

    Returns:
        a tensor of x_t's shape and dtype.
    """
    coefficients = x0_coefficients(_tables(scheduler).alphas_cumprod, scheduler.config.prediction_type)
    if coefficients is not None:
        coefficients = tuple(_gather(k, t, x_t) for k in coefficients)
    return x0_from_output(model_output, x_t, coefficients)


def p_mean_variance(scheduler, model_output, x_t, t, clip_denoised=None):
    """The model's reverse step p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) (Ho eq. 1, 11).

    mu_theta = mutilde_t(x_t, x0_hat) (Ho eq. 7 with x0_hat from ``predict_x0``; equal to Ho eq. 11 for epsilon).
    sigma_t^2 by ``variance_type``, the scheduler module's ``model_log_variance`` (Ho sec. 3.2, Nichol & Dhariwal
    eq. 15) with log betatilde_t clipped at i = 0 and, for fixed_large, betatilde_2 in place of beta_1 at i = 0.

    Args:
        model_output: (B, C, H, W), or (B, 2C, H, W) for learned variances.
        clip_denoised: clamp x0_hat to [-r, r] with r = clip_sample_range; defaults to the scheduler's clip_sample.
    Returns:
        dict with "mean", "variance", "log_variance" (broadcastable to x_t) and "pred_x0".
    """
    config = scheduler.config
    tb = _tables(scheduler)
    variance_type = config.variance_type
    learned = variance_type in ("learned", "learned_range")
    model_output, var_channels = split_model_output(model_output, x_t.shape[1])
    if learned and var_channels is None:
        raise ValueError(f"variance_type={variance_type!r} needs {2 * x_t.shape[1]} output channels")
    large = tb.large_log_variance if variance_type in ("fixed_large", "fixed_large_log") else tb.betas.log()
    log_variance = model_log_variance(
        variance_type, _gather(large, t, x_t), _gather(tb.posterior_log_variance_clipped, t, x_t),
        var_channels if learned else None,
    )
    pred_x0 = predict_x0(scheduler, model_output, x_t, t)
    if clip_denoised is None:
        clip_denoised = bool(config.clip_sample)
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    mean, _, _ = posterior_mean_variance(scheduler, pred_x0, x_t, t)
    return {"mean": mean, "variance": log_variance.exp(), "log_variance": log_variance, "pred_x0": pred_x0}


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
    t = torch.full((x_start.shape[0],), scheduler.alphas_cumprod.shape[0] - 1, dtype=torch.long)
    mean, var = q_mean_variance(scheduler, x_start, t)
    return _sum_per_image(normal_kl(mean, var.log().expand_as(mean), torch.zeros_like(mean), torch.zeros_like(mean)))


def vlb_terms(scheduler, model_output, x_start, x_t, t, clip_denoised=None, detach_mean=False):
    """The terms L_{t-1} of the bound (Ho eq. 5), per image in nats, for code timesteps t of shape (B,):
    KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) where t > 0, and the decoder
    L_0 = -log p_theta(x_0 | x_1) (Ho eq. 13) where t = 0.

    detach_mean: stop the gradient through the mean, keeping it through the variance (the L_vlb part of
    L_hybrid, Nichol & Dhariwal sec. 3.1).
    """
    if detach_mean:
        prediction, var_channels = split_model_output(model_output, x_t.shape[1])
        prediction = prediction.detach()
        model_output = prediction if var_channels is None else torch.cat([prediction, var_channels], dim=1)
    p = p_mean_variance(scheduler, model_output, x_t, t, clip_denoised=clip_denoised)
    true_mean, _, true_log_var = posterior_mean_variance(scheduler, x_start, x_t, t)
    kl = _sum_per_image(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]))
    decoder_nll = -_sum_per_image(discretized_gaussian_log_likelihood(x_start, p["mean"], 0.5 * p["log_variance"]))
    return torch.where(t.to(kl.device) == 0, decoder_nll, kl)


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


def _model_output(model, x_t, t, class_labels=None):
    out = model(x_t, t) if class_labels is None else model(x_t, t, class_labels=class_labels)
    return out.sample if hasattr(out, "sample") else out


@torch.no_grad()
def bits_per_dim(model, scheduler, x_start, generator=None, clip_denoised=None, progress=True, class_labels=None):
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
    """
    from tqdm.auto import tqdm

    if x_start.min() < -1 or x_start.max() > 1:
        raise ValueError("bits_per_dim expects images scaled to [-1, 1]")
    num_t = scheduler.alphas_cumprod.shape[0]
    batch, dims = x_start.shape[0], x_start[0].numel()
    terms = torch.zeros(batch, num_t, dtype=torch.float64)
    for i in tqdm(range(num_t - 1, -1, -1), desc="bits/dim", disable=not progress, leave=False):
        t = torch.full((batch,), i, dtype=torch.long, device=x_start.device)
        noise = torch.randn(x_start.shape, generator=generator, dtype=x_start.dtype).to(x_start.device)
        x_t = q_sample(scheduler, x_start, t, noise)  # Ho eq. 4
        out = _model_output(model, x_t, t, class_labels)
        terms[:, i] = vlb_terms(scheduler, out, x_start, x_t, t, clip_denoised=clip_denoised).double().cpu()
    prior = prior_kl(scheduler, x_start).double().cpu()
    scale = 1.0 / (dims * LOG2)
    terms_bpd = terms * scale
    return BitsPerDim(
        total=prior * scale + terms_bpd.sum(dim=1), prior=prior * scale, decoder=terms_bpd[:, 0], terms=terms_bpd
    )

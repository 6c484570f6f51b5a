# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""DDPM scheduler written from the equations of Ho et al. 2020 and Nichol & Dhariwal 2021.

This file is self-contained (it imports torch, numpy and diffusers only) so that it can be copied into a
Hub repository and loaded as remote code by ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)``.

Notation: the paper counts t = 1..T; code indexes timesteps 0..T-1 (code index i = paper t - 1).
``alphas_cumprod[i]`` is alphabar at paper step i + 1, and alphabar_0 := 1 (before the first step).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import FrozenDict, register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# Smallest variance used wherever a log or a square root of betatilde is taken: betatilde_1 = 0 (Ho eq. 7).
_MIN_VARIANCE = 1e-20


def betas_from_alphabar_fn(alphabar_fn, num_train_timesteps, max_beta=0.999):
    """beta_t = min(1 - alphabar(t/T) / alphabar((t-1)/T), max_beta) for t = 1..T (Nichol & Dhariwal eq. 17).

    Args:
        alphabar_fn: continuous alphabar on [0, 1].
        num_train_timesteps: T.
    Returns:
        float32 tensor of shape (T,).
    """
    betas = [
        min(1.0 - alphabar_fn((i + 1) / num_train_timesteps) / alphabar_fn(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def cosine_alphabar(u, s=0.008):
    """alphabar(u) = f(u)/f(0) up to the constant f(0), f(u) = cos^2(((u + s)/(1 + s)) pi/2) (Nichol & Dhariwal eq. 17).

    The constant cancels in the ratio alphabar(t)/alphabar(t-1) used by ``betas_from_alphabar_fn``.
    """
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def laplace_alphabar(u):
    """alphabar(u) of the Laplace noise schedule (Hang et al. 2024): log-SNR lambda(u) = -sign(0.5 - u) * 0.5 *
    log(1 - 2|0.5 - u|), as diffusers defines "laplace"; this returns sqrt(SNR / (1 + SNR)) as diffusers does."""
    log_snr = -0.5 * math.copysign(1.0, 0.5 - u) * math.log(1 - 2 * abs(0.5 - u) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end):
    """The forward-process variances beta_1..beta_T (Ho sec. 2 and 4: linear 1e-4 -> 0.02 over T = 1000).

    Held in float32 exactly as diffusers' DDPMScheduler holds them, so that a model trained with either
    scheduler sees the same noise levels.

    Returns:
        float32 tensor of shape (num_train_timesteps,), values in (0, 1).
    """
    T = num_train_timesteps
    if beta_schedule == "linear":  # Ho sec. 4
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if beta_schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal eq. 17
        return betas_from_alphabar_fn(cosine_alphabar, T)
    if beta_schedule == "laplace":
        return betas_from_alphabar_fn(laplace_alphabar, T)
    if beta_schedule == "sigmoid":  # GeoDiff
        return torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def rescale_to_zero_terminal_snr(betas):
    """Shift and scale sqrt(alphabar_t) so that alphabar_T = 0 and alphabar_1 is unchanged (Lin et al. 2024, Alg. 1).

    Args:
        betas: float tensor of shape (T,).
    Returns:
        betas of the same shape and dtype, with the last one equal to 1.
    """
    sqrt_alphabar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alphabar[0].clone(), sqrt_alphabar[-1].clone()
    sqrt_alphabar = (sqrt_alphabar - last) * (first / (first - last))
    alphabar = sqrt_alphabar**2
    alphas = torch.cat([alphabar[:1], alphabar[1:] / alphabar[:-1]])
    return 1.0 - alphas


def posterior_coefficients(alphabar_t, alphabar_s):
    """The forward step t -> s < t and the posterior q(x_s | x_t, x_0) = N(mean_from_x0 x_0 + mean_from_xt x_t,
    betatilde'_t I) (Ho eq. 6, 7), for a chain that may skip steps (Nichol & Dhariwal sec. 4):

        alpha'_t = alphabar_t / alphabar_s,  beta'_t = 1 - alpha'_t
        betatilde'_t = (1 - alphabar_s) / (1 - alphabar_t) beta'_t
        mean_from_x0 = sqrt(alphabar_s) beta'_t / (1 - alphabar_t)
        mean_from_xt = sqrt(alpha'_t) (1 - alphabar_s) / (1 - alphabar_t)

    With s = t - 1 these are beta_t and Ho eq. 7 exactly. Evaluated elementwise in the order written, which is the
    order of diffusers' DDPMScheduler (so float32 inputs give its numbers bit for bit).

    Args:
        alphabar_t: tensor of alphabar at the current timesteps, values in [0, 1).
        alphabar_s: tensor of the same shape at the next timesteps (1 after the last step), >= alphabar_t.
    Returns:
        (beta', betatilde', mean_from_x0, mean_from_xt), tensors of the inputs' shape and dtype. betatilde' is 0
        where alphabar_s = 1 (the last step): callers that take its log must floor or replace it.
    """
    one_minus_ab_t = 1 - alphabar_t
    alpha_t = alphabar_t / alphabar_s
    beta_t = 1 - alpha_t
    posterior_variance = (1 - alphabar_s) / one_minus_ab_t * beta_t
    mean_from_x0 = alphabar_s**0.5 * beta_t / one_minus_ab_t
    mean_from_xt = alpha_t**0.5 * (1 - alphabar_s) / one_minus_ab_t
    return beta_t, posterior_variance, mean_from_x0, mean_from_xt


def x0_coefficients(alphabar_t, prediction_type):
    """(a, b, c) with x_0 = (a x_t - b output) / c, the x_0 a model output implies under q(x_t | x_0) (Ho eq. 4):

    - "epsilon": a = 1, b = sqrt(1 - alphabar_t), c = sqrt(alphabar_t) (Ho eq. 4 solved for x_0, as in Ho eq. 15);
    - "v_prediction": a = sqrt(alphabar_t), b = sqrt(1 - alphabar_t), c = 1, from v = sqrt(alphabar_t) eps -
      sqrt(1 - alphabar_t) x_0 (Salimans & Ho 2022);
    - "sample": None (the output is x_0).

    Args:
        alphabar_t: tensor of alphabar at the current timesteps, values in [0, 1).
        prediction_type: one of ``PREDICTION_TYPES``.
    Returns:
        a tuple of three tensors of alphabar_t's shape and dtype, or None.
    """
    if prediction_type == "sample":
        return None
    ones = torch.ones_like(alphabar_t)
    if prediction_type == "epsilon":
        return ones, (1 - alphabar_t) ** 0.5, alphabar_t**0.5
    if prediction_type == "v_prediction":
        return alphabar_t**0.5, (1 - alphabar_t) ** 0.5, ones
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def x0_from_output(model_output, sample, coefficients):
    """x_0 = (a x_t - b output) / c with ``coefficients`` = (a, b, c) from ``x0_coefficients`` (Ho eq. 15 for
    epsilon), or the output itself when they are None ("sample").

    Args:
        model_output: (B, C, ...) prediction channels (no variance channels).
        sample: x_t of the same shape.
        coefficients: three tensors broadcastable against ``sample`` (or Python floats), or None.
    """
    if coefficients is None:
        return model_output
    a, b, c = coefficients
    return (a * sample - b * model_output) / c


def q_sample_with(x_start, noise, sqrt_alphabar, sqrt_one_minus_alphabar):
    """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, a draw of q(x_t | x_0) (Ho eq. 4), from the two square
    roots (tensors broadcastable against x_0, or Python floats). The one place the forward marginal is written.

    Args:
        x_start: x_0, shape (B, ...). noise: eps ~ N(0, I), same shape.
    Returns:
        x_t, x_0's shape.
    """
    if not isinstance(sqrt_alphabar, torch.Tensor):
        sqrt_alphabar = torch.tensor(sqrt_alphabar, dtype=x_start.dtype, device=x_start.device)
    return torch.addcmul(sqrt_one_minus_alphabar * noise, sqrt_alphabar, x_start)


def learned_range_log_variance(v, log_beta, log_betatilde):
    """log sigma_t^2 = frac log beta_t + (1 - frac) log betatilde_t with frac = (v + 1) / 2 (Nichol & Dhariwal
    eq. 15), v the model's variance channels in [-1, 1]; the log variances broadcastable against v."""
    frac = (v + 1) / 2
    return frac * log_beta + (1 - frac) * log_betatilde


def model_log_variance(variance_type, log_beta, log_betatilde, variance_channels=None):
    """log sigma_t^2 of p(x_s | x_t) by ``variance_type`` (Ho sec. 3.2; Nichol & Dhariwal eq. 15):

    - "fixed_small"/"fixed_small_log": log betatilde_t (Ho eq. 7); "fixed_large"/"fixed_large_log": log beta_t;
    - "learned": log of the variance channels (diffusers' convention: they are sigma_t^2), floored at 1e-20;
    - "learned_range": N&D eq. 15 from the channels (``learned_range_log_variance``).

    Args:
        log_beta, log_betatilde: tensors broadcastable against the channels (floored by the caller where 0).
        variance_channels: (B, C, ...) for the learned types.
    Returns:
        a tensor: the channels' shape for the learned types, else log_beta's.
    """
    if variance_type in ("fixed_small", "fixed_small_log"):
        return log_betatilde
    if variance_type in ("fixed_large", "fixed_large_log"):
        return log_beta
    if variance_type in ("learned", "learned_range"):
        if variance_channels is None:
            raise ValueError(f"variance_type={variance_type!r} needs the model's variance channels")
        if variance_type == "learned":
            return variance_channels.clamp(min=_MIN_VARIANCE).log()
        return learned_range_log_variance(variance_channels, log_beta, log_betatilde)
    raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")


def split_model_output(model_output, sample_channels):
    """(prediction, variance channels) of a model output: a (B, 2C, ...) output is split in two halves of C channels
    (the variance channels last, Nichol & Dhariwal sec. 3.1), a (B, C, ...) output has no variance channels (None).

    Args:
        model_output: (B, C, ...) or (B, 2C, ...). sample_channels: C, the sample's channel count.
    """
    channels = model_output.shape[1]
    if channels == sample_channels:
        return model_output, None
    if channels == 2 * sample_channels:
        return model_output.split(sample_channels, dim=1)
    raise ValueError(f"a model output for {sample_channels}-channel samples has {sample_channels} or "
                     f"{2 * sample_channels} channels, got {channels}")


@dataclass
class Posterior:
    """q(x_s | x_t, x_0) = N(mean_from_x0 x_0 + mean_from_xt x_t, variance I) for a kept pair t -> s (Ho eq. 6, 7
    over a skipped step, Nichol & Dhariwal sec. 4), with beta = beta'_t = 1 - alphabar_t / alphabar_s. 0-d float32
    tensors; ``variance`` is betatilde'_t unfloored (0 at the chain's last step)."""

    mean_from_x0: torch.Tensor
    mean_from_xt: torch.Tensor
    variance: torch.Tensor
    beta: torch.Tensor

    def mean(self, x_start, x_t):
        """The posterior mean mean_from_x0 x_0 + mean_from_xt x_t (Ho eq. 7), in x_t's dtype and device."""
        return self.mean_from_x0.to(x_t) * x_start + self.mean_from_xt.to(x_t) * x_t


class DDPMHFScheduler(SchedulerMixin, ConfigMixin):
    """Denoising diffusion probabilistic model sampler (Ho et al. 2020, Algorithm 2) with the variance choices and
    step skipping of Improved DDPM (Nichol & Dhariwal 2021).

    The configuration surface, its defaults and the numbers ``step`` returns are those of diffusers'
    ``DDPMScheduler`` (``from_config`` swaps the two both ways), except that the last step of a chain that ends
    above timestep 0 adds no noise (Ho Algorithm 2; diffusers adds some). What differs is how it is computed: every
    coefficient the reverse step needs is tabulated once per ``set_timesteps`` as plain Python floats, so ``step``
    indexes a row and runs a handful of fused tensor ops, with no host-device synchronisation and no numpy.

    Args:
        num_train_timesteps (`int`, defaults to 1000): T, the number of forward-process steps.
        beta_start (`float`, defaults to 1e-4): beta_1 of the linear, scaled_linear and sigmoid schedules.
        beta_end (`float`, defaults to 0.02): beta_T of those schedules.
        beta_schedule (`str`, defaults to "linear"): one of "linear" (Ho), "scaled_linear", "squaredcos_cap_v2"
            (cosine, Nichol & Dhariwal eq. 17), "sigmoid", "laplace".
        trained_betas (array of shape (T,), optional): explicit betas; overrides the schedule.
        variance_type (`str`, defaults to "fixed_small"): sigma_t^2 of p(x_{t-1}|x_t) (Ho sec. 3.2):
            "fixed_small" / "fixed_small_log": betatilde_t (Ho eq. 7); "fixed_large" / "fixed_large_log": beta_t;
            "learned": the second half of the model's channels is sigma_t^2 itself (diffusers' convention);
            "learned_range": the second half is v in [-1, 1] and
            log sigma_t^2 = frac log beta_t + (1 - frac) log betatilde_t with frac = (v + 1) / 2
            (Nichol & Dhariwal eq. 15).
        clip_sample (`bool`, defaults to True): clamp the predicted x_0 to [-clip_sample_range, clip_sample_range].
        prediction_type (`str`, defaults to "epsilon"): what the model predicts: "epsilon" (Ho eq. 11),
            "sample" (x_0) or "v_prediction" (v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0).
        thresholding (`bool`, defaults to False): dynamic thresholding of the predicted x_0 (Saharia et al. 2022).
        dynamic_thresholding_ratio (`float`, defaults to 0.995): the quantile of |x_0| used by thresholding.
        clip_sample_range (`float`, defaults to 1.0): see ``clip_sample``.
        sample_max_value (`float`, defaults to 1.0): the largest threshold of dynamic thresholding.
        timestep_spacing (`str`, defaults to "leading"): how ``set_timesteps`` picks the kept timesteps
            ("leading", "trailing", "linspace"; Lin et al. 2024, Table 2).
        steps_offset (`int`, defaults to 0): added to the "leading" timesteps.
        rescale_betas_zero_snr (`bool`, defaults to False): rescale betas to zero terminal SNR.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1
    split_model_output = staticmethod(split_model_output)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        for name, value, allowed in (
            ("variance_type", variance_type, VARIANCE_TYPES),
            ("prediction_type", prediction_type, PREDICTION_TYPES),
            ("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if int(num_train_timesteps) < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")

        if trained_betas is not None:
            betas = torch.tensor(np.asarray(trained_betas), dtype=torch.float32).flatten()
            if betas.numel() != num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {betas.numel()} values but num_train_timesteps is {num_train_timesteps}"
                )
        else:
            betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        if rescale_betas_zero_snr:
            betas = rescale_to_zero_terminal_snr(betas)
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("every beta_t must lie in (0, 1]")

        self.betas = betas
        self.alphas = 1.0 - betas  # alpha_t (Ho sec. 2)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # alphabar_t (Ho eq. 4)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0  # x_T ~ N(0, I)
        self.variance_type = variance_type

        self.custom_timesteps = False
        self.num_inference_steps = None
        # Before set_timesteps the chain is the full one: T-1, ..., 0 (paper T..1).
        self._set_chain(np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64), device=None)
        # Every value of this config is the model's noise process, also those left at their defaults: forget
        # diffusers' record of which were (_use_default_values), or OtherScheduler.from_config(config) replaces them
        # by its own defaults (HeunDiscreteScheduler's beta_start 0.00085, DPMSolver's "linspace" spacing, ...).
        self._internal_dict = FrozenDict({k: v for k, v in self._internal_dict.items() if k != "_use_default_values"})

    # ------------------------------------------------------------------ tables

    def _set_chain(self, timesteps, device):
        """Store the kept timesteps (descending) and tabulate, for each, the coefficients of one reverse step.

        For a kept pair (t, s) with s the next kept timestep (s = -1 after the last one, alphabar_{-1} := 1), the
        step uses the skipped-step variances beta'_t = 1 - alphabar_t / alphabar_s (Nichol & Dhariwal sec. 4), which
        equal beta_t when nothing is skipped. Each row holds Python floats (see ``_step_coefficients``), so that
        ``step`` needs no device transfer and no synchronisation.
        """
        kept = [int(t) for t in timesteps]
        T = self.config.num_train_timesteps
        bad = [t for t in kept if not 0 <= t < T]
        if bad:
            raise ValueError(f"timesteps {bad} are outside [0, {T - 1}]")
        self.timesteps = torch.from_numpy(np.ascontiguousarray(timesteps)).to(device)
        prev = kept[1:] + [-1]
        self._rows = self._step_coefficients(torch.tensor(kept), torch.tensor(prev))
        self._row_of_timestep = {}
        for k, t in enumerate(kept):
            self._row_of_timestep.setdefault(t, k)
        self._prev_of_timestep = {t: prev[k] for t, k in self._row_of_timestep.items()}

    def _step_coefficients(self, t, s):
        """Rows of the step table for the kept pairs t -> s (see ``_set_chain``):

        - x_0 from the model output: ``(a, b, c)`` of ``x0_coefficients`` (Ho eq. 15 for epsilon), None for "sample";
        - mean_from_x0, mean_from_xt of the posterior mean and betatilde'_t from ``posterior_coefficients`` (Ho eq. 7),
          betatilde'_t floored at 1e-20 as diffusers floors it;
        - sigma_t by variance_type (Ho sec. 3.2): sqrt(betatilde'_t) or sqrt(beta'_t); None for learned variances,
          which take log betatilde'_t and log beta'_t (Nichol & Dhariwal eq. 15);
        - noisy: whether the step adds sigma_t z. Every step but the last of the chain does (s = -1): Ho Algorithm 2
          sets z = 0 at t = 1, improved-diffusion's p_sample masks the noise of the chain's last step. diffusers draws
          noise whenever t > 0, which agrees when the chain ends at 0 and otherwise leaves noise in the final sample.

        The arithmetic is float32 and elementwise, as diffusers' DDPMScheduler evaluates it: the two schedulers then
        agree to rounding even where x0 is unclipped and huge.

        Args:
            t, s: long tensors (K,) of current and next timesteps (s = -1 after the last).
        Returns:
            K tuples ``(x0, mean_from_x0, mean_from_xt, sigma, log_var_small, log_var_large, noisy)`` of Python values.
        """
        ab_t = self.alphas_cumprod[t]
        ab_s = torch.where(s >= 0, self.alphas_cumprod[s.clamp(min=0)], self.one)
        beta_t, var_small, mean_from_x0, mean_from_xt = posterior_coefficients(ab_t, ab_s)
        var_small = torch.clamp(var_small, min=_MIN_VARIANCE)
        x0 = x0_coefficients(ab_t, self.config.prediction_type)
        x0 = [None] * len(t) if x0 is None else zip(*(c.tolist() for c in x0))
        log_var_small = torch.log(var_small)
        log_var_large = torch.log(beta_t)
        variance_type = self.config.variance_type
        if variance_type == "fixed_small":
            sigma = (var_small**0.5).tolist()
        elif variance_type == "fixed_small_log":
            sigma = torch.exp(0.5 * log_var_small).tolist()
        elif variance_type in ("fixed_large", "fixed_large_log"):
            sigma = (beta_t**0.5).tolist()
        else:
            sigma = [None] * len(t)  # from the model output
        noisy = (s >= 0).tolist()
        return list(
            zip(
                x0, mean_from_x0.tolist(), mean_from_xt.tolist(), sigma, log_var_small.tolist(),
                log_var_large.tolist(), noisy,
            )
        )

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        """diffusers' ``DDPMScheduler._get_variance``, with its return values (diffusers' pipelines and tests call it).

        With s = ``previous_timestep(t)`` and betatilde'_t floored at 1e-20 (``posterior_coefficients``), it returns,
        by ``variance_type`` (the config's when None):

        - "fixed_small": betatilde'_t, a variance;
        - "fixed_small_log": exp(0.5 log betatilde'_t) = sqrt(betatilde'_t), a standard deviation;
        - "fixed_large": beta'_t, a variance;
        - "fixed_large_log": log beta'_t, a log variance;
        - "learned": ``predicted_variance`` unchanged (the channels are sigma_t^2);
        - "learned_range": frac log beta'_t + (1 - frac) log betatilde'_t with frac = (v + 1) / 2, v =
          ``predicted_variance``: a log variance (Nichol & Dhariwal eq. 15).

        ``step`` does not call it: it reads the same quantities from the table built by ``set_timesteps``.

        Args:
            t (`int` or 0-d tensor): a timestep of the chain (any t in [0, T-1] before ``set_timesteps``).
            predicted_variance (`torch.Tensor`, optional): the model's variance channels, any shape.
            variance_type (`str`, optional): overrides the config's.
        Returns:
            a 0-d float tensor, or a tensor of ``predicted_variance``'s shape for the learned types.
        """
        posterior = self.posterior(t)
        beta_t, variance = posterior.beta, torch.clamp(posterior.variance, min=_MIN_VARIANCE)
        variance_type = self.config.variance_type if variance_type is None else variance_type
        if variance_type == "fixed_small":
            return variance
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if variance_type == "fixed_large":
            return beta_t
        if variance_type == "fixed_large_log":
            return torch.log(beta_t)
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            return learned_range_log_variance(predicted_variance, torch.log(beta_t), torch.log(variance))
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")

    # ------------------------------------------------------------ the maths, by quantity

    def _alphabar_at(self, timestep):
        """alphabar at a code timestep, 1 for -1 (after the last step), as a 0-d float32 tensor."""
        timestep = int(timestep)
        return self.one if timestep < 0 else self.alphas_cumprod[timestep]

    def posterior(self, timestep, prev_timestep=None):
        """The posterior q(x_s | x_t, x_0) of the kept pair t -> s (Ho eq. 6, 7; Nichol & Dhariwal sec. 4 for a
        respaced chain), by ``posterior_coefficients``.

        Args:
            timestep: t, an int or 0-d tensor in [0, T-1].
            prev_timestep: s < t, or -1 for the clean image (alphabar := 1); default ``previous_timestep(t)``.
        Returns:
            ``Posterior(mean_from_x0, mean_from_xt, variance, beta)``, 0-d float32 tensors.
        """
        s = self.previous_timestep(timestep) if prev_timestep is None else prev_timestep
        beta, variance, mean_from_x0, mean_from_xt = posterior_coefficients(
            self._alphabar_at(timestep), self._alphabar_at(s)
        )
        return Posterior(mean_from_x0=mean_from_x0, mean_from_xt=mean_from_xt, variance=variance, beta=beta)

    def model_variance(self, timestep, variance_channels=None, prev_timestep=None):
        """sigma_t^2 and log sigma_t^2 of the model's step p(x_s | x_t) for the config's variance_type (Ho sec. 3.2:
        betatilde'_t or beta'_t; learned: the channels; learned_range: Nichol & Dhariwal eq. 15), betatilde'_t
        floored at 1e-20 as diffusers floors it. This is the variance of p; ``step`` adds no noise at the chain's
        last step whatever it is (Ho Algorithm 2).

        Args:
            timestep, prev_timestep: as for ``posterior``.
            variance_channels: (B, C, ...) the model's variance channels (see ``split_model_output``); needed for
                the learned types.
        Returns:
            (variance, log_variance): 0-d tensors for the fixed types, the channels' shape for the learned ones.
        """
        posterior = self.posterior(timestep, prev_timestep)
        log_betatilde = torch.log(torch.clamp(posterior.variance, min=_MIN_VARIANCE))
        log_variance = model_log_variance(
            self.config.variance_type, torch.log(posterior.beta), log_betatilde, variance_channels
        )
        return torch.exp(log_variance), log_variance

    def predict_x0(self, model_output, timestep, sample):
        """x_0 implied by the model's prediction at t, unclipped: (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)
        (Ho eq. 15) for "epsilon", sqrt(alphabar_t) x_t - sqrt(1 - alphabar_t) v (Salimans & Ho 2022) for
        "v_prediction", the output itself for "sample" (``x0_coefficients``).

        Args:
            model_output: (B, C, ...) prediction channels (split off the variance channels first).
            timestep: t (int or 0-d tensor). sample: x_t, (B, C, ...).
        """
        coefficients = x0_coefficients(self.alphas_cumprod[int(timestep)], self.config.prediction_type)
        if coefficients is not None:
            coefficients = tuple(float(c) for c in coefficients)
        return x0_from_output(model_output, sample, coefficients)

    def clip_x0(self, pred_original_sample):
        """The predicted x_0 as ``step`` uses it: dynamic thresholding (Saharia et al. 2022) when ``thresholding``,
        else clamped to [-clip_sample_range, clip_sample_range] when ``clip_sample``, else unchanged."""
        if self.config.thresholding:
            return self._threshold_sample(pred_original_sample)
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            return pred_original_sample.clamp(-limit, limit)
        return pred_original_sample

    # ------------------------------------- the full chain, batched over timesteps (the bound's quantities)

    def _full_chain_table(self):
        """float64 tables of the full T-step chain (t -> t - 1), each (T,), built once from ``alphas_cumprod`` (the
        float32 values the scheduler trains and samples with; rebuilt if that tensor is replaced):
        "alphas_cumprod"; "beta", "posterior_variance" betatilde_t, "mean_from_x0", "mean_from_xt" of Ho eq. 7 by
        ``posterior_coefficients`` with alphabar_{t-1} (alphabar_0 := 1); "log_small": log betatilde_t with
        betatilde_2 in place of betatilde_1 = 0; "log_large": log beta_t with the same betatilde_2 at t = 1; "log_beta":
        log beta_t. The t = 1 replacements are improved-diffusion's (gaussian_diffusion.py,
        ``posterior_log_variance_clipped`` and the "fixed_large" ``np.append(posterior_variance[1], betas[1:])``):
        they only set the decoder's variance (Ho eq. 13), since ``step`` adds no noise at the chain's last step."""
        table = getattr(self, "_full_chain", None)
        if table is None or table["source"] is not self.alphas_cumprod:
            ab = self.alphas_cumprod.double().cpu()
            ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
            beta, posterior_variance, mean_from_x0, mean_from_xt = posterior_coefficients(ab, ab_prev)
            first = posterior_variance[1:2] if len(ab) > 1 else beta[:1]  # betatilde_2
            table = {"source": self.alphas_cumprod, "alphas_cumprod": ab, "beta": beta,
                     "posterior_variance": posterior_variance, "mean_from_x0": mean_from_x0,
                     "mean_from_xt": mean_from_xt, "log_small": torch.cat([first, posterior_variance[1:]]).log(),
                     "log_large": torch.cat([first, beta[1:]]).log(), "log_beta": beta.log()}
            self._full_chain = table
        return table

    def _per_sample(self, name, timesteps, like):
        """The full-chain table ``name`` at ``timesteps`` (B,), in ``like``'s dtype and device, shaped (B, 1, ...)."""
        index = torch.as_tensor(timesteps).long().cpu().flatten()
        values = self._full_chain_table()[name][index]
        return values.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_mean_variance(self, x_start, timesteps):
        """q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I) (Ho eq. 4), batched.

        Args:
            x_start: x_0, (B, C, H, W). timesteps: (B,) code timesteps in [0, T-1].
        Returns:
            (mean of x_start's shape, variance (B, 1, 1, 1)), from the float64 table in x_start's dtype.
        """
        ab = self._per_sample("alphas_cumprod", timesteps, x_start.double())
        return (ab.sqrt() * x_start.double()).to(x_start.dtype), (1 - ab).to(x_start.dtype)

    def posterior_mean_variance(self, x_start, x_t, timesteps):
        """q(x_{t-1} | x_t, x_0) = N(mutilde_t(x_t, x_0), betatilde_t I) of the full chain (Ho eq. 6, 7), batched.

        Args:
            x_start: x_0, (B, C, H, W). x_t: same shape. timesteps: (B,) code timesteps in [0, T-1].
        Returns:
            (mean of x_t's shape, variance betatilde_t (B, 1, 1, 1), log variance with betatilde_2 at t = 0 (paper
            t = 1, where betatilde_1 = 0; ``_full_chain_table``) (B, 1, 1, 1)).
        """
        mean = (self._per_sample("mean_from_x0", timesteps, x_t) * x_start
                + self._per_sample("mean_from_xt", timesteps, x_t) * x_t)
        return (mean, self._per_sample("posterior_variance", timesteps, x_t),
                self._per_sample("log_small", timesteps, x_t))

    def p_mean_variance(self, model_output, x_t, timesteps, clip_denoised=None):
        """The model's reverse step p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) of the full chain (Ho eq. 1,
        11), batched: what the variational bound (Ho eq. 5) compares with the posterior.

        mu_theta = mutilde_t(x_t, x0_hat) (Ho eq. 7 with x0_hat of Ho eq. 15 for epsilon, ``x0_coefficients``; equal
        to Ho eq. 11). sigma_t^2 by ``variance_type`` (``model_log_variance``: Ho sec. 3.2, Nichol & Dhariwal eq. 15)
        from "log_small" and, for fixed_large, "log_large" of ``_full_chain_table`` (learned_range interpolates
        towards log beta_t, as improved-diffusion does). At t = 0 these are the decoder's variance; ``step`` never
        uses them there (no noise at the chain's last step), and ``model_variance(0)`` gives the unreplaced
        beta_1 / betatilde_1 (floored).

        Args:
            model_output: (B, C, H, W), or (B, 2C, H, W) for learned variances.
            x_t: (B, C, H, W). timesteps: (B,) code timesteps in [0, T-1].
            clip_denoised: clamp x0_hat to [-r, r], r = clip_sample_range; default the config's clip_sample.
        Returns:
            {"mean", "variance", "log_variance" (broadcastable to x_t), "pred_x0"}.
        """
        variance_type = self.config.variance_type
        learned = variance_type in ("learned", "learned_range")
        prediction, variance_channels = split_model_output(model_output, x_t.shape[1])
        if learned and variance_channels is None:
            raise ValueError(f"variance_type={variance_type!r} needs {2 * x_t.shape[1]} output channels")
        large = "log_large" if variance_type in ("fixed_large", "fixed_large_log") else "log_beta"
        log_variance = model_log_variance(variance_type, self._per_sample(large, timesteps, x_t),
                                          self._per_sample("log_small", timesteps, x_t),
                                          variance_channels if learned else None)
        coefficients = x0_coefficients(self._full_chain_table()["alphas_cumprod"], self.config.prediction_type)
        if coefficients is not None:
            coefficients = tuple(k.to(x_t.device)[torch.as_tensor(timesteps).long().to(x_t.device)]
                                 .to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1))) for k in coefficients)
        pred_x0 = x0_from_output(prediction, x_t, coefficients)
        if self.config.clip_sample if clip_denoised is None else clip_denoised:
            pred_x0 = pred_x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        mean, _, _ = self.posterior_mean_variance(pred_x0, x_t, timesteps)
        return {"mean": mean, "variance": log_variance.exp(), "log_variance": log_variance, "pred_x0": pred_x0}

    def x0_and_noise(self, model_output, x_t, timesteps, clip=False, prediction_type=None):
        """The clean image and the noise a model's prediction at x_t implies, batched over timesteps: x0_hat by
        ``x0_coefficients`` (Ho eq. 15 for "epsilon", Salimans & Ho 2022 for "v_prediction", the output for "sample")
        and eps_hat = (x_t - sqrt(alphabar_t) x0_hat) / sqrt(1 - alphabar_t) (Ho eq. 4 solved for eps; the output
        itself for "epsilon" when unclipped).

        Args:
            model_output: (B, C, H, W) prediction channels (split off variance channels first). x_t: the same shape.
            timesteps: (B,) code timesteps in [0, T-1].
            clip: x0_hat as ``clip_x0`` makes it (the config's clip_sample / thresholding), and eps_hat recomputed
                from the clipped x0_hat, as improved-diffusion's ``ddim_sample`` does (diffusers' DDIMScheduler.step with
                ``use_clipped_model_output=True``); without it near t = T, where
                1 / sqrt(alphabar_t) is 2e4 for the cosine schedule, the model's error in eps dominates x0_hat.
            prediction_type: what ``model_output`` is (default: the config's), e.g. "epsilon" for a noise estimate.
        Returns:
            (x0_hat, eps_hat), each of x_t's shape and dtype (coefficients from the float64 table).
        """
        prediction_type = prediction_type or self.config.prediction_type
        ab = self._per_sample("alphas_cumprod", timesteps, x_t.double())
        x0 = x0_from_output(model_output.double(), x_t.double(), x0_coefficients(ab, prediction_type))
        if clip:
            x0 = self.clip_x0(x0)
        elif prediction_type == "epsilon":
            return x0.to(x_t.dtype), model_output
        eps = (x_t.double() - ab.sqrt() * x0) / (1 - ab).sqrt()
        return x0.to(x_t.dtype), eps.to(x_t.dtype)

    def ddim_step(self, x0_hat, eps_hat, prev_timesteps):
        """The deterministic DDIM step to s (Song et al. 2021, eq. 12 with sigma_t = 0), batched: x_s = sqrt(alphabar_s)
        x0_hat + sqrt(1 - alphabar_s) eps_hat, with (x0_hat, eps_hat) from ``x0_and_noise`` at x_t. It is Ho eq. 4
        with the predicted noise, the probability-flow ODE's first-order step in the DDPM's discrete time.

        Args:
            x0_hat, eps_hat: (B, C, H, W). prev_timesteps: (B,) code timesteps s in [-1, T-1]; -1 is the clean image
                (alphabar := 1, x_s = x0_hat).
        Returns:
            x_s, x0_hat's shape and dtype.
        """
        s = torch.as_tensor(prev_timesteps).long()
        clean = (s < 0).to(x0_hat.device).view(-1, *([1] * (x0_hat.ndim - 1)))
        ab = torch.where(clean, torch.ones((), dtype=torch.float64, device=x0_hat.device),
                         self._per_sample("alphas_cumprod", s.clamp(min=0), x0_hat.double()))
        return (ab.sqrt() * x0_hat.double() + (1 - ab).sqrt() * eps_hat.double()).to(x0_hat.dtype)

    def ddim_x0_between(self, x_t, timesteps, x_s, prev_timesteps):
        """The clean image x0_tilde whose DDIM step from x_t at t lands exactly on x_s at s (``ddim_step`` solved for
        x0: Salimans & Ho 2022, Algorithm 2, the progressive-distillation target): with rho = sqrt(1 - alphabar_s) /
        sqrt(1 - alphabar_t), x0_tilde = (x_s - rho x_t) / (sqrt(alphabar_s) - rho sqrt(alphabar_t)).

        Args:
            x_t: (B, C, H, W) at timesteps t (B,) in [0, T-1]. x_s: the same shape at prev_timesteps s (B,) in
                [-1, t - 1]; -1 is the clean image (alphabar := 1, x0_tilde = x_s).
        Returns:
            x0_tilde, x_t's shape and dtype (computed in float64).
        """
        s = torch.as_tensor(prev_timesteps).long()
        clean = (s < 0).to(x_t.device).view(-1, *([1] * (x_t.ndim - 1)))
        ab_t = self._per_sample("alphas_cumprod", timesteps, x_t.double())
        ab_s = torch.where(clean, torch.ones((), dtype=torch.float64, device=x_t.device),
                           self._per_sample("alphas_cumprod", s.clamp(min=0), x_t.double()))
        rho = ((1 - ab_s) / (1 - ab_t)).sqrt()
        return ((x_s.double() - rho * x_t.double()) / (ab_s.sqrt() - rho * ab_t.sqrt())).to(x_t.dtype)

    def q_sample_from(self, sample, noise, timestep, from_timestep):
        """A draw of the forward process from a noisier-than-clean state: x_t ~ q(x_t | x_s) = N(sqrt(alphabar_t /
        alphabar_s) x_s, (1 - alphabar_t / alphabar_s) I) for s < t (Ho eq. 4 over the steps s+1..t; s = -1 is the
        clean image, alphabar := 1). RePaint's jump back up (Lugmayr et al. 2022, Alg. 1 line 10).

        Args:
            sample: x_s, (B, ...). noise: eps, same shape. timestep: t. from_timestep: s < t (or -1).
        """
        ratio = float(self._alphabar_at(timestep)) / float(self._alphabar_at(from_timestep))
        return q_sample_with(sample, noise, ratio**0.5, (1 - ratio) ** 0.5)

    @staticmethod
    def timestep_of_noise_ratio(scheduler, sigma):
        """The t* whose forward marginal has the noise-to-signal ratio sigma: argmin_t |sqrt((1 - alphabar_t) /
        alphabar_t) - sigma| (Ho eq. 4: x_t / sqrt(alphabar_t) = x_0 + sqrt((1 - alphabar_t) / alphabar_t) eps), so
        that sqrt(alphabar_t*) (x_0 + sigma n) is distributed as x_t* ~ q(x_t* | x_0). A static method taking any
        scheduler with ``alphas_cumprod`` (the denoising pipeline runs with diffusers' samplers too)."""
        ab = torch.as_tensor(scheduler.alphas_cumprod).double()
        return int((((1 - ab) / ab).sqrt() - sigma).abs().argmin())

    # ------------------------------------------------------------ diffusers API

    def scale_model_input(self, sample, timestep=None):
        """DDPM does not scale the model input: returns ``sample`` unchanged."""
        return sample

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        """Choose the timesteps of the reverse chain (descending) and tabulate the step coefficients for them.

        Args:
            num_inference_steps (`int`, optional): how many reverse steps, 1..T, spaced by ``timestep_spacing``.
            device (`str` or `torch.device`, optional): where ``self.timesteps`` lives.
            timesteps (`list[int]`, optional): explicit strictly descending timesteps in [0, T-1]; excludes
                ``num_inference_steps``.
        """
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            timesteps = np.asarray(
                timesteps.tolist() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.int64
            ).flatten()
            if timesteps.size == 0:
                raise ValueError("`timesteps` must not be empty.")
            if (np.diff(timesteps) >= 0).any():
                raise ValueError("`custom_timesteps` must be in descending order.")
            if timesteps[0] >= T:
                raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {T}.")
            if timesteps[-1] < 0:
                raise ValueError("`timesteps` must be >= 0.")
            self.custom_timesteps = True
            self.num_inference_steps = len(timesteps)
        else:
            if num_inference_steps is None or int(num_inference_steps) < 1:
                raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps}")
            num_inference_steps = int(num_inference_steps)
            if num_inference_steps > T:
                raise ValueError(
                    f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.config.train_timesteps`:"
                    f" {T} as the unet model trained with this scheduler can only handle maximal {T} timesteps."
                )
            self.custom_timesteps = False
            self.num_inference_steps = num_inference_steps
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                timesteps = np.linspace(0, T - 1, num_inference_steps).round()[::-1].astype(np.int64)
            elif spacing == "leading":
                ratio = T // num_inference_steps
                timesteps = np.arange(num_inference_steps, dtype=np.int64)[::-1] * ratio + self.config.steps_offset
            else:  # trailing
                timesteps = np.round(np.arange(T, 0, -T / num_inference_steps)).astype(np.int64) - 1
        self._set_chain(timesteps, device)

    def previous_timestep(self, timestep):
        """The timestep that follows ``timestep`` in the reverse chain (-1 after the last), as a tensor when the
        chain was set by ``set_timesteps`` (as diffusers returns it), else ``timestep - 1``."""
        if self.custom_timesteps or self.num_inference_steps:
            return torch.tensor(self._prev_of_timestep[self._row_index(timestep)[1]])
        return timestep - 1

    def _row_index(self, timestep):
        t = int(timestep)  # an int, or a 0-d tensor (the pipeline passes CPU scalars from self.timesteps)
        try:
            return self._row_of_timestep[t], t
        except KeyError:
            raise ValueError(
                f"timestep {t} is not in the scheduler's timesteps {self.timesteps.tolist()}; call set_timesteps "
                "with the schedule you sample with"
            ) from None

    def step(self, model_output, timestep, sample, generator=None, return_dict=True, x0_transform=None):
        """One reverse step x_t -> x_{t-1} ~ p(x_{t-1} | x_t) (Ho Algorithm 2, with the posterior form of Ho eq. 7).

        x0 = (a x_t - b output) / c as the prediction type says (Ho eq. 15 for epsilon), clipped or thresholded;
        x_{t-1} = mean_from_x0 * x0 + mean_from_xt * x_t + sigma_t z, z ~ N(0, I) drawn at every step but the last
        of the chain, where z = 0 (Ho Algorithm 2; diffusers draws z whenever timestep > 0).

        Args:
            model_output (`torch.Tensor` of shape (B, C, H, W), or (B, 2C, H, W) for learned variances): the model's
                prediction (eps, x_0 or v, as ``prediction_type`` says) and, for "learned"/"learned_range", the
                variance channels after the C prediction channels.
            timestep (`int` or 0-d tensor): the current timestep, one of ``self.timesteps``.
            sample (`torch.Tensor` of shape (B, C, H, W)): x_t.
            generator (`torch.Generator` or a list of B of them, optional): draws z exactly as diffusers does.
            return_dict (`bool`): return a ``DDPMSchedulerOutput`` rather than a tuple.
            x0_transform (callable, optional): applied to the clipped/thresholded x0 before the posterior mean
                (improved-diffusion's ``denoised_fn``), e.g. DDNM's projection x0 - A+(A x0 - y); its result is used
                as it is (not clipped again) and returned as ``pred_original_sample``.

        Returns:
            ``DDPMSchedulerOutput(prev_sample=x_{t-1}, pred_original_sample=x0)`` or the tuple of both.
        """
        row, t = self._row_index(timestep)
        x0, mean_from_x0, mean_from_xt, sigma, log_small, log_large, noisy = self._rows[row]
        variance_type = self.variance_type
        predicted_variance = None
        if variance_type in ("learned", "learned_range"):
            if model_output.shape[1] != 2 * sample.shape[1]:
                raise ValueError(
                    f"variance_type={variance_type!r} needs a model output with twice the sample's channels "
                    f"({2 * sample.shape[1]}), got {model_output.shape[1]}"
                )
            model_output, predicted_variance = split_model_output(model_output, sample.shape[1])

        if x0 is None:  # prediction_type "sample"
            pred_original_sample = model_output
        else:  # Ho eq. 15 (x0_coefficients), fused: (a x_t - b output) / c
            scale, output_coef, divisor = x0
            scaled = sample if scale == 1.0 else sample * scale
            pred_original_sample = torch.sub(scaled, model_output, alpha=output_coef)
            if divisor != 1.0:
                pred_original_sample.div_(divisor)
        pred_original_sample = self.clip_x0(pred_original_sample)
        if x0_transform is not None:
            pred_original_sample = x0_transform(pred_original_sample)

        prev_sample = torch.add(pred_original_sample * mean_from_x0, sample, alpha=mean_from_xt)  # Ho eq. 7
        if noisy:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            if sigma is not None:
                prev_sample.add_(noise, alpha=sigma)
            elif variance_type == "learned_range":
                # sigma = exp(0.5 log sigma^2), log sigma^2 = frac log beta + (1 - frac) log betatilde,
                # frac = (v + 1) / 2 (Nichol & Dhariwal eq. 15), folded into exp(a v + b).
                a = 0.25 * (log_large - log_small)
                b = 0.25 * (log_large + log_small)
                prev_sample.addcmul_(torch.exp(predicted_variance * a + b), noise)
            else:  # learned: the channels are sigma_t^2
                prev_sample.addcmul_(predicted_variance.sqrt(), noise)

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _threshold_sample(self, sample):
        """Dynamic thresholding (Saharia et al. 2022, sec. 2.3): s = the ``dynamic_thresholding_ratio`` quantile of
        |x0| per image, clamped to [1, sample_max_value]; x0 <- clamp(x0, -s, s) / s.

        Args:
            sample: (B, ...) predicted x_0.
        """
        dtype = sample.dtype
        flat = sample.reshape(sample.shape[0], -1)
        if dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1, max=self.config.sample_max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(dtype)

    # ------------------------------------------------------ forward process

    def _alphabar_factors(self, timesteps, like):
        """sqrt(alphabar_t) and sqrt(1 - alphabar_t) for ``timesteps``, shaped to broadcast against ``like``."""
        cache = getattr(self, "_sqrt_tables", None)
        key = (like.device, like.dtype)
        if cache is None or cache[0] != key:
            alphabar = self.alphas_cumprod.double()
            tables = (alphabar.sqrt().to(like.device, like.dtype), (1 - alphabar).sqrt().to(like.device, like.dtype))
            self._sqrt_tables = cache = (key, tables)
        sqrt_ab, sqrt_one_minus_ab = cache[1]
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps)
        index = timesteps.to(like.device, torch.long).flatten()
        shape = (-1,) + (1,) * (like.ndim - 1)
        return sqrt_ab[index].view(shape), sqrt_one_minus_ab[index].view(shape)

    def q_sample(self, x_start, noise, timesteps):
        """Sample q(x_t | x_0): x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps (Ho eq. 4, ``q_sample_with``).

        Args:
            x_start: x_0, shape (B, ...).
            noise: eps, same shape.
            timesteps: integer tensor of shape (B,) (or a scalar), values in [0, T-1].
        Returns:
            x_t, same shape and dtype as x_0.
        """
        a, b = self._alphabar_factors(timesteps, x_start)
        return q_sample_with(x_start, noise, a, b)

    def add_noise(self, original_samples, noise, timesteps):
        """diffusers' name for ``q_sample`` (Ho eq. 4)."""
        return self.q_sample(original_samples, noise, timesteps)

    def get_velocity(self, sample, noise, timesteps):
        """The v-prediction target v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0 (Salimans & Ho 2022).

        Args:
            sample: x_0, shape (B, ...).
            noise: eps, same shape.
            timesteps: integer tensor of shape (B,) (or a scalar).
        """
        a, b = self._alphabar_factors(timesteps, sample)
        return torch.addcmul(-b * sample, a, noise)

    def snr(self, timesteps):
        """The signal-to-noise ratio SNR(t) = alphabar_t / (1 - alphabar_t) of q(x_t | x_0) (Kingma et al. 2021,
        eq. 2; Ho eq. 4's mean and variance), float32 of shape (B,), computed in float64.

        Args:
            timesteps: integer tensor of shape (B,) (or a scalar).
        """
        timesteps = torch.as_tensor(timesteps)
        ab = self.alphas_cumprod.to(timesteps.device)[timesteps.long()].double()
        return (ab / (1 - ab)).float()

    def __len__(self):
        return self.config.num_train_timesteps

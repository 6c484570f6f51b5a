# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""Super-resolution with an unconditional DDPM, no retraining: DDNM / DDNM+ projection (Wang et al. 2022) or ILVR
(Choi et al. 2021) on top of the scheduler's ancestral step, as a diffusers ``DiffusionPipeline``.

This file is self-contained (torch, numpy and diffusers only): ``DDPMHFPipeline.save_pretrained`` copies it into the
saved folder, so that a process without ddpm_hf can run it with ``DiffusionPipeline.from_pretrained(folder_or_repo,
custom_pipeline="pipeline_ddpm_hf_super_resolution", trust_remote_code=True)``.
"""

import importlib

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt")
METHODS = ("ddnm", "ilvr")


def _base_pipeline_class():
    """DDPMHFPipeline from ``pipeline_ddpm_hf`` beside this module (the installed package's), or None when this file
    runs as remote code without it."""
    package = __name__.rpartition(".")[0]
    try:
        return importlib.import_module(f"{package}.pipeline_ddpm_hf" if package else "pipeline_ddpm_hf").DDPMHFPipeline
    except (ImportError, AttributeError):
        return None


def downsample(x, scale):
    """A: average pooling over scale x scale blocks (the degradation of DDNM's SR experiments)."""
    return F.avg_pool2d(x, scale)


def upsample(y, scale):
    """A+: replicate each pixel into a scale x scale block. It is A's Moore-Penrose pseudo-inverse (A A+ = I, A+ A is
    the orthogonal projection onto block-constant images), as DDNM requires (Wang et al. 2022, sec. 3.1)."""
    return y.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def consistent_clip(x, y, scale, iterations=50):
    """The image nearest to x (Euclidean) in [-1, 1] with A x = y: per block, clip(x + c, -1, 1) with the shift c
    that brings the block's mean to y (the KKT conditions of projecting onto a box intersected with the hyperplane
    mean = y), c found by bisection. Clipping a consistent x to [-1, 1] alone would break A x = y; y must lie in
    [-1, 1]."""
    # at shift -1 - max(block) every pixel clips to -1, at 1 - min(block) to +1: the mean goes from -1 to 1
    low, high = -1 - F.max_pool2d(x, scale), 1 + F.max_pool2d(-x, scale)
    for _ in range(iterations):
        shift = (low + high) / 2
        below = downsample((x + upsample(shift, scale)).clamp(-1, 1), scale) < y
        low, high = torch.where(below, shift, low), torch.where(below, high, shift)
    return (x + upsample((low + high) / 2, scale)).clamp(-1, 1)


class DDPMHFSuperResolutionPipeline(DiffusionPipeline):
    """Upscale a low-resolution image to the UNet's resolution with an unconditional DDPM (same components as
    ``DDPMHFPipeline``). The degradation is A = scale x scale average pooling, A+ = replication; the result x
    satisfies A x = y (up to quantisation) when the input has no noise.

    Methods (``method=``):

    - "ddnm" (Wang et al. 2022, DDNM Alg. 1): at every reverse step the predicted x_0|t (Ho eq. 15) is replaced by
      x^_0|t = x_0|t - A+(A x_0|t - y) (range-space from y, null-space from the model) and x_s ~ p(x_s | x_t,
      x^_0|t) is the scheduler's step with that x_0 (posterior mean Ho eq. 7, the model's variance). With
      ``noise_level`` sigma_y > 0 it is DDNM+ (sec. 3.3): x^_0|t = x_0|t - lambda_t A+(A x_0|t - y) and the step's
      noise is shrunk to variance Phi_t = sigma_t^2 - (a_t lambda_t sigma_y)^2, with a_t the x_0 coefficient of the
      posterior mean and lambda_t = min(1, sigma_t / (a_t sigma_y)).
    - "ilvr" (Choi et al. 2021, Alg. 1): x'_s ~ p(x_s | x_t) (the scheduler's step), y_s ~ q(y_s | A+ y) (Ho eq. 4),
      x_s = phi(y_s) + x'_s - phi(x'_s) with the low-pass filter phi = A+ A.

    Args:
        unet (`UNet2DModel`): eps/x_0/v network, with variance channels for learned variances.
        scheduler (`DDPMHFScheduler` or diffusers' `DDPMScheduler`).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # values taken as [0, 1] and mapped to [-1, 1] here: diffusers' normalisation skips inputs with negative
        # values (a noisy image has some)
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=1, do_resize=False, vae_latent_channels=-1, do_normalize=False
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved DDPMHFPipeline folder or Hub repo as this pipeline: ``DDPMHFPipeline.from_pretrained`` (no
        folder code runs) then ``from_pipe``. Without ddpm_hf (this file loaded as remote code) it is diffusers'
        ``from_pretrained`` with this file as the custom pipeline."""
        base = _base_pipeline_class()
        if base is None:
            kwargs.setdefault("trust_remote_code", True)
            return DiffusionPipeline.from_pretrained(
                pretrained_model_name_or_path, custom_pipeline=__name__.rpartition(".")[2], **kwargs
            )
        return cls.from_pipe(base.from_pretrained(pretrained_model_name_or_path, **kwargs), torch_dtype=None)

    def save_pretrained(self, save_directory, **kwargs):
        """Save as a ``DDPMHFPipeline`` folder (which carries this file): load it back with ``from_pretrained``."""
        base = _base_pipeline_class()
        if base is None:
            raise RuntimeError("saving needs ddpm_hf installed (DDPMHFPipeline writes the remote-code layout)")
        base(unet=self.unet, scheduler=self.scheduler).save_pretrained(save_directory, **kwargs)

    # ------------------------------------------------------------------ pieces

    def _model_output(self, x, t):
        """The UNet output, keeping the variance channels only when the scheduler uses them."""
        output = self.unet(x, t).sample
        learned = getattr(self.scheduler.config, "variance_type", None) in ("learned", "learned_range")
        return output if learned or output.shape[1] == x.shape[1] else output[:, : x.shape[1]]

    def _x0_coefficients(self, t):
        """(a, b, c) with x_0 = (a x_t - b output) / c: Ho eq. 15 for "epsilon" (a = 1, b = sqrt(1 - alphabar_t),
        c = sqrt(alphabar_t)), Salimans & Ho 2022 for "v_prediction" (a = sqrt(alphabar_t), b = sqrt(1 -
        alphabar_t), c = 1); None for "sample"."""
        alphabar = float(self.scheduler.alphas_cumprod[int(t)])
        kind = self.scheduler.config.prediction_type
        if kind == "sample":
            return None
        if kind == "epsilon":
            return 1.0, (1 - alphabar) ** 0.5, alphabar**0.5
        return alphabar**0.5, (1 - alphabar) ** 0.5, 1.0

    def _projected_step(self, output, t, x, project, generator):
        """x_s ~ p(x_s | x_t, x^_0|t) with x^_0|t = project(x_0|t) (DDNM Alg. 1): x_0|t from the output (Ho eq. 15),
        clipped as the scheduler clips it, projected, turned back into the output that implies it, then the
        scheduler's step (posterior mean Ho eq. 7 and the model's variance, N&D eq. 15). Returns (x_s, x^_0|t)."""
        channels = x.shape[1]
        prediction, variance = output[:, :channels], output[:, channels:]
        coefficients = self._x0_coefficients(t)
        if coefficients is None:
            x0 = prediction
        else:
            a, b, c = coefficients
            x0 = (a * x - b * prediction) / c
        config = self.scheduler.config
        if getattr(config, "thresholding", False):
            x0 = self.scheduler._threshold_sample(x0)
        elif getattr(config, "clip_sample", False):
            x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        x0 = project(x0)
        prediction = x0 if coefficients is None else (a * x - c * x0) / b
        output = torch.cat([prediction, variance], dim=1)
        return self.scheduler.step(output, t, x, generator=generator).prev_sample, x0

    def _variance(self, t, variance_channels):
        """sigma_t^2 of the step at t, from diffusers' ``_get_variance`` (whose meaning depends on variance_type)."""
        kind = self.scheduler.config.variance_type
        value = self.scheduler._get_variance(t, predicted_variance=variance_channels)
        if kind in ("fixed_large_log", "learned_range"):
            return torch.exp(value)  # a log variance
        if kind == "fixed_small_log":
            return value**2  # a standard deviation
        return value

    def _ddnm_plus_step(self, output, t, x, y, scale, sigma_y, generator):
        """DDNM+ (Wang et al. 2022, sec. 3.3) for y = A x + n, n ~ N(0, sigma_y^2 I)."""
        channels = x.shape[1]
        s = int(self.scheduler.previous_timestep(t))
        alphabar_t = float(self.scheduler.alphas_cumprod[int(t)])
        alphabar_s = 1.0 if s < 0 else float(self.scheduler.alphas_cumprod[s])
        # posterior mean coefficients (Ho eq. 7 over a skipped step, Nichol & Dhariwal sec. 4)
        a_t = alphabar_s**0.5 * (1 - alphabar_t / alphabar_s) / (1 - alphabar_t)
        b_t = (alphabar_t / alphabar_s) ** 0.5 * (1 - alphabar_s) / (1 - alphabar_t)
        # the std of the noise the step adds; none at the chain's last step (Ho Alg. 2), whatever the variance says
        sigma_t = self._variance(t, output[:, channels:]).to(x).sqrt() * (1.0 if s >= 0 else 0.0)
        lam = (sigma_t / (a_t * sigma_y)).clamp(max=1.0)
        chosen = {}

        def project(x0):
            chosen["x0"] = x0 - lam * upsample(downsample(x0, scale) - y, scale)
            return chosen["x0"]

        prev, _ = self._projected_step(output, t, x, project, generator)
        x0 = chosen["x0"]
        if getattr(self.scheduler.config, "clip_sample", False):  # as the step clips the x_0 it is given
            x0 = x0.clamp(-self.scheduler.config.clip_sample_range, self.scheduler.config.clip_sample_range)
        mean = a_t * x0 + b_t * x  # the posterior mean the step used
        # sqrt(Phi_t) / sigma_t, Phi_t = sigma_t^2 - (a_t lambda_t sigma_y)^2
        shrink = (1 - (a_t * lam * sigma_y / sigma_t.clamp(min=1e-12)) ** 2).clamp(min=0).sqrt()
        return mean + shrink * (prev - mean)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        image=None,
        scale: int | None = None,
        method: str = "ddnm",
        noise_level: float = 0.0,
        num_inference_steps: int = 250,
        timesteps=None,
        generator=None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Upscale ``image`` by ``scale`` to the UNet's resolution.

        Args:
            image: the low-resolution image(s): PIL, numpy (h, w), (h, w, C) or (B, h, w, C), or tensor (C, h, w) /
                (B, C, h, w), values in [0, 1], channels as the UNet's.
            scale: the upscaling factor (default: the UNet's resolution / the input's); the UNet's resolution must be
                ``scale`` times the input's.
            method: "ddnm" or "ilvr" (see the class docstring).
            noise_level: the standard deviation sigma_y of Gaussian noise in the input, in [0, 1] pixel units
                (DDNM+; "ddnm" only). 0 = a clean input, which the result reproduces exactly when downsampled.
            num_inference_steps, timesteps: the reverse chain (respaced by the scheduler's timestep_spacing).
            generator: `torch.Generator` (or a list, one per image).
            output_type: "pil", "np" (B, H, W, C) or "pt" (B, C, H, W), values in [0, 1].
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if noise_level < 0 or (noise_level > 0 and method != "ddnm"):
            raise ValueError(f"noise_level must be >= 0, and > 0 only with method='ddnm', got {noise_level}")
        if image is None:
            raise ValueError("super-resolution needs an `image`")
        device, dtype = self._execution_device, self.unet.dtype
        y = (self.image_processor.preprocess(image) * 2 - 1).to(device, dtype)
        channels = self.unet.config.in_channels
        if y.shape[1] != channels:
            raise ValueError(f"the image has {y.shape[1]} channels but the model takes {channels}")
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        low = tuple(y.shape[-2:])
        if scale is None:
            if size[0] % low[0] or size[1] % low[1] or size[0] // low[0] != size[1] // low[1]:
                raise ValueError(f"the model's resolution {size} is not a whole multiple of the input's {low}")
            scale = size[0] // low[0]
        if int(scale) != scale or scale < 2:
            raise ValueError(f"scale must be an integer >= 2, got {scale}")
        scale = int(scale)
        if size[0] % scale or size[1] % scale:
            raise ValueError(f"the model's resolution {size} cannot take scale {scale} (not a multiple of it)")
        if (low[0] * scale, low[1] * scale) != size:
            raise ValueError(
                f"an input of {low} at scale {scale} gives {(low[0] * scale, low[1] * scale)}, but the model makes "
                f"{size}: give a {(size[0] // scale, size[1] // scale)} input"
            )
        if isinstance(generator, list) and len(generator) != len(y):
            raise ValueError(f"got {len(generator)} generators for a batch of {len(y)}")

        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=list(timesteps))
        else:
            self.scheduler.set_timesteps(num_inference_steps)
        chain = self.scheduler.timesteps.tolist()
        sigma_y = 2.0 * noise_level  # [0, 1] pixel units -> the model's [-1, 1]
        y_up = upsample(y, scale)

        def project(x0):  # DDNM Alg. 1: x^_0|t = x_0|t - A+(A x_0|t - y)
            return x0 - upsample(downsample(x0, scale) - y, scale)

        shape = (len(y), channels, *size)
        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # x_T ~ N(0, I)
        for k, t in enumerate(self.progress_bar(chain)):
            output = self._model_output(x, t)
            if method == "ilvr":
                x = self.scheduler.step(output, t, x, generator=generator).prev_sample  # x'_s ~ p(x_s | x_t)
                alphabar = 1.0 if k + 1 == len(chain) else float(self.scheduler.alphas_cumprod[chain[k + 1]])
                noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
                y_s = alphabar**0.5 * y_up + (1 - alphabar) ** 0.5 * noise  # y_s ~ q(y_s | y), Ho eq. 4
                x = x - upsample(downsample(x, scale), scale) + upsample(downsample(y_s, scale), scale)
            elif sigma_y > 0:
                x = self._ddnm_plus_step(output, t, x, y, scale, sigma_y, generator)
            else:
                x, x0 = self._projected_step(output, t, x, project, generator)
        if method == "ddnm" and sigma_y == 0:
            x = consistent_clip(x0, y, scale)  # the last x^_0 (A x^_0 = y), brought into [-1, 1] keeping A x = y
        elif method == "ilvr":
            x = consistent_clip(x, y, scale)  # ILVR's x_0 has A x_0 = y; into [-1, 1] keeping it
        images = self.image_processor.postprocess(x, output_type=output_type, do_denormalize=[True] * len(x))
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""Super-resolution with an unconditional DDPM, no retraining: DDNM / DDNM+ projection (Wang et al. ICLR 2023) or ILVR
(Choi et al. ICCV 2021) on top of the scheduler's ancestral step, as a diffusers ``DiffusionPipeline``.

This file imports torch, numpy, diffusers and its siblings ``pipeline_ddpm_hf*.py`` (the shared
``DDPMHFTaskPipelineMixin`` of ``pipeline_ddpm_hf_task_base.py``) only: ``DDPMHFPipeline.save_pretrained`` copies
them all into the saved folder, and diffusers' remote-code loader fetches the siblings with it (it follows a
``from .module import`` of a file beside the pipeline's), so that a process without ddpm_hf can run it with
``DiffusionPipeline.from_pretrained(folder_or_repo,
custom_pipeline="pipeline_ddpm_hf_super_resolution", trust_remote_code=True)``.
"""


from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

# diffusers copies a local folder's relative imports one level deep: this file names every sibling it needs
from .pipeline_ddpm_hf import OUTPUT_TYPES
from .pipeline_ddpm_hf_denoiser import denoise  # noqa: F401
from .pipeline_ddpm_hf_hub import upload_folder_to_hub  # noqa: F401
from .pipeline_ddpm_hf_layout import DDPMHFLayoutMixin  # noqa: F401
from .pipeline_ddpm_hf_task_base import DDPMHFTaskPipelineMixin

METHODS = ("ddnm", "ilvr")


@dataclass
class DDPMHFSuperResolutionPipelineOutput(ImagePipelineOutput):
    """Output of ``DDPMHFSuperResolutionPipeline``.

    Args:
        images: the upscaled images (list of PIL images, numpy (B, H, W, C) or tensor (B, C, H, W) in [0, 1]).
        unet_calls: UNet evaluations per image (one per reverse step; a guided step's two branches are one call on a
            doubled batch).
    """

    unet_calls: int = 0


def downsample(x, scale):
    """A: average pooling over scale x scale blocks (the degradation of DDNM's SR experiments)."""
    return F.avg_pool2d(x, scale)


def upsample(y, scale):
    """A+: replicate each pixel into a scale x scale block. It is A's Moore-Penrose pseudo-inverse (A A+ = I, A+ A is
    the orthogonal projection onto block-constant images), as DDNM requires (Wang et al. ICLR 2023, sec. 3.1)."""
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


class DDPMHFSuperResolutionPipeline(DDPMHFTaskPipelineMixin, DiffusionPipeline):
    """Upscale a low-resolution image to the UNet's resolution with an unconditional DDPM (same components as
    ``DDPMHFPipeline``). The degradation is A = scale x scale average pooling, A+ = replication; the result x
    satisfies A x = y (up to quantisation) when the input has no noise.

    Methods (``method=``):

    - "ddnm" (Wang et al. ICLR 2023, DDNM Alg. 1): at every reverse step the predicted x_0|t (Ho eq. 15, clipped or
      thresholded as the scheduler does) is replaced by x^_0|t = x_0|t - A+(A x_0|t - y) (range-space from y,
      null-space from the model), not clipped again, so A x^_0|t = y at every step; x_s ~ p(x_s | x_t, x^_0|t) is the
      scheduler's step with that x_0 (``x0_transform``; posterior mean Ho eq. 7, the model's variance). With
      ``noise_level`` sigma_y > 0 it is DDNM+ (sec. 3.3, Eq. 17 and 19) per singular component, as the authors' code:
      x^_0|t = x_0|t - lambda_t A+(A x_0|t - y) with lambda_t = min(1, sigma_t / (a_t r sigma_y)) (A+ n has std
      r sigma_y along each block-constant direction, r = ``scale``; a_t the x_0 coefficient of the posterior mean),
      and the step's noise keeps variance sigma_t^2 in the null space and Phi_t = sigma_t^2 - (a_t lambda_t r
      sigma_y)^2 along each range direction (``_ddnm_plus_step``).
    - "ilvr" (Choi et al. ICCV 2021, Alg. 1): x'_s ~ p(x_s | x_t) (the scheduler's step), y_s ~ q(y_s | A+ y)
      (Ho eq. 4),       x_s = phi(y_s) + x'_s - phi(x'_s) with the low-pass filter phi = A+ A.

    Args:
        unet (`UNet2DModel`): eps/x_0/v network, with variance channels for learned variances.
        scheduler (`DDPMHFScheduler`): ours, or diffusers' `DDPMScheduler` (made ours by ``from_config``).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, id2label=None, null_class_id=None,
                 guidance_scale=None, guidance_scales=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # a conditional model's, kept by from_pipe and saving
        self._register_conditional(id2label, null_class_id, guidance_scale, guidance_scales)
        self.image_processor = self._unit_range_processor()  # [0, 1] in, mapped to [-1, 1] here

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _ddnm_plus_step(scheduler, output, t, x, y, scale, sigma_y, generator):
        """DDNM+ (Wang et al. ICLR 2023, sec. 3.3) for y = A x + n, n ~ N(0, sigma_y^2 I), per singular component as
        the authors' code does (wyhuai/DDNM, functions/svd_operators.py, ``Lambda`` and ``Lambda_noise``).

        A (average pooling over r x r blocks, r = ``scale``) has one singular value 1/r per block, along the
        block-constant direction; A+ replicates pixels. So A+ n lies in the range space (block-constant images) with
        std r sigma_y along each range direction, and nothing in the null space. With a_t the x_0 coefficient of the
        posterior mean (Ho eq. 7) and sigma_t the step's noise std:
        Eq. 17: x^_0|t = x_0|t - lambda_t A+(A x_0|t - y), lambda_t = min(1, sigma_t / (a_t r sigma_y)) (the range
        space is the only place A+(...) acts);
        Eq. 19: x_s = mu(x_t, x^_0|t) + fresh noise of variance sigma_t^2 in the null space and
        Phi_t = sigma_t^2 - (a_t lambda_t r sigma_y)^2 (>= 0; 0 once lambda_t < 1) along each range direction, so
        that every direction of x_s carries the step's sigma_t^2 in all. x_0|t is clipped or thresholded as the
        scheduler's step does."""
        s = int(scheduler.previous_timestep(t))
        a_t = scheduler.posterior(t, s).mean_from_x0.to(x)
        prediction, variance_channels = scheduler.split_model_output(output, x.shape[1])
        # the std of the noise the step adds; none at the chain's last step (Ho Alg. 2), whatever the variance says
        sigma_t = scheduler.model_variance(t, variance_channels, s)[0].to(x).sqrt() * (1.0 if s >= 0 else 0.0)
        range_std = scale * sigma_y  # the std of A+ n along each range direction (singular value 1/r)
        lam = (sigma_t / (a_t * range_std)).clamp(max=1.0)

        def project(x0):  # DDNM Eq. 17
            return x0 - lam * upsample(downsample(x0, scale) - y, scale)

        step = scheduler.step(output, t, x, generator=generator, x0_transform=project)
        mean = scheduler.posterior(t, s).mean(step.pred_original_sample, x)  # Ho eq. 7, the step's mean
        # the step drew x_s = mean + sigma_t z: split z into its range part (block means) and its null part
        z = (step.prev_sample - mean) / sigma_t.clamp(min=1e-12)
        z_range = upsample(downsample(z, scale), scale)
        phi = (sigma_t**2 - (a_t * lam * range_std) ** 2).clamp(min=0)  # Eq. 19, along each range direction
        return mean + sigma_t * (z - z_range) + phi.sqrt() * z_range

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
        class_labels=None,
        guidance_scale: float | None = None,
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
            return_dict: return a ``DDPMHFSuperResolutionPipelineOutput`` rather than a tuple.
            class_labels, guidance_scale: class-conditional models: one class per image (or one image and several
                classes: it is repeated), classifier-free guidance as in ``DDPMHFPipeline``.
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
        labels = self._class_ids(class_labels, None if len(y) == 1 else len(y))
        guidance_scale = self._guidance_scale(guidance_scale, labels)
        if labels is not None and len(y) == 1:
            y = y.expand(len(labels), *y.shape[1:])
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

        scheduler = self._ddpm_scheduler()
        chain = self._chain(scheduler, num_inference_steps, timesteps, generator, len(y))
        sigma_y = 2.0 * noise_level  # [0, 1] pixel units -> the model's [-1, 1]
        y_up = upsample(y, scale)

        def project(x0):  # DDNM Alg. 1: x^_0|t = x_0|t - A+(A x_0|t - y), used as it is (A x^_0|t = y exactly)
            return x0 - upsample(downsample(x0, scale) - y, scale)

        shape = (len(y), channels, *size)
        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # x_T ~ N(0, I)
        for k, t in enumerate(self.progress_bar(chain)):
            output = self._model_output(x, t, labels, guidance_scale, scheduler)
            if method == "ilvr":
                x = scheduler.step(output, t, x, generator=generator).prev_sample  # x'_s ~ p(x_s | x_t)
                noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
                y_s = scheduler.q_sample(y_up, noise, chain[k + 1]) if k + 1 < len(chain) else y_up  # q(y_s | y)
                x = x - upsample(downsample(x, scale), scale) + upsample(downsample(y_s, scale), scale)  # ILVR Alg. 1
            elif sigma_y > 0:
                x = self._ddnm_plus_step(scheduler, output, t, x, y, scale, sigma_y, generator)
            else:
                step = scheduler.step(output, t, x, generator=generator, x0_transform=project)
                x, x0 = step.prev_sample, step.pred_original_sample
        if method == "ddnm" and sigma_y == 0:
            x = consistent_clip(x0, y, scale)  # the last x^_0 (A x^_0 = y), brought into [-1, 1] keeping A x = y
        elif method == "ilvr":
            x = consistent_clip(x, y, scale)  # ILVR's x_0 has A x_0 = y; into [-1, 1] keeping it
        images = self.image_processor.postprocess(x, output_type=output_type, do_denormalize=[True] * len(x))
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DDPMHFSuperResolutionPipelineOutput(images=images, unet_calls=len(chain))

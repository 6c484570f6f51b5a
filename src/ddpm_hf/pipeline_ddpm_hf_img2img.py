# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""Image-to-image (SDEdit, Meng et al. ICLR 2022) and denoising of an image with known Gaussian noise with an
unconditional DDPM, no retraining, as a diffusers ``DiffusionPipeline``.

This file imports torch, numpy, diffusers and its siblings ``pipeline_ddpm_hf*.py`` (the shared
``DDPMHFTaskPipelineMixin`` of ``pipeline_ddpm_hf_task_base.py``) only: ``DDPMHFPipeline.save_pretrained`` copies
them all into the saved folder, and diffusers' remote-code loader fetches the siblings with it (it follows a
``from .module import`` of a file beside the pipeline's), so that a process without ddpm_hf can run it with
``DiffusionPipeline.from_pretrained(folder_or_repo,
custom_pipeline="pipeline_ddpm_hf_img2img", trust_remote_code=True)``.
"""

import inspect
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

# diffusers copies a local folder's relative imports one level deep: this file names every sibling it needs
from .pipeline_ddpm_hf import OUTPUT_TYPES, _own_scheduler_class
from .pipeline_ddpm_hf_denoiser import step_kwargs
from .pipeline_ddpm_hf_hub import upload_folder_to_hub  # noqa: F401
from .pipeline_ddpm_hf_layout import DDPMHFLayoutMixin  # noqa: F401
from .pipeline_ddpm_hf_task_base import DDPMHFTaskPipelineMixin


def strength_start(num_steps, strength):
    """Index of the first kept timestep an img2img chain of ``num_steps`` steps runs from, as diffusers' img2img
    pipelines map ``strength``: the last int(num_steps * strength) steps of the chain are run."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    run = min(int(num_steps * strength), num_steps)
    if run == 0:
        raise ValueError(f"strength {strength} runs no step of a {num_steps}-step chain: raise one of them")
    return num_steps - run


@dataclass
class DDPMHFImg2ImgPipelineOutput(ImagePipelineOutput):
    """Output of ``DDPMHFImg2ImgPipeline``.

    Args:
        images: the results (list of PIL images, numpy (B, H, W, C) or tensor (B, C, H, W) in [0, 1]).
        start_timestep: the timestep t0 (SDEdit) or t* (denoising) the reverse chain started from.
        unet_calls: UNet evaluations per image.
    """

    start_timestep: int = 0
    unet_calls: int = 0


class DDPMHFImg2ImgPipeline(DDPMHFTaskPipelineMixin, DiffusionPipeline):
    """Image-to-image with an unconditional DDPM (same components as ``DDPMHFPipeline``).

    - ``strength`` (SDEdit, Meng et al. ICLR 2022, sec. 3 with the VP SDE, i.e. a DDPM): the image y is noised to t0
      with q(x_t0 | x_0 = y) (Ho eq. 4) and the reverse chain runs from t0 (Ho Alg. 2). t0 is picked from the chain as
      diffusers' img2img pipelines pick it: the last int(num_inference_steps * strength) steps run, so t0 is about
      strength * T; 1 starts from (almost) pure noise.
    - ``noise_level`` sigma (denoising): y = x_0 + sigma n with n ~ N(0, I), sigma in [0, 1] pixel units (2 sigma in
      the model's [-1, 1]). The chain starts at the t* where sqrt((1 - alphabar_t*) / alphabar_t*) = 2 sigma, from
      x_t* = sqrt(alphabar_t*) y, which is exactly a draw of q(x_t* | x_0) (Ho eq. 4): no noise is added.

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

    @torch.no_grad()
    def __call__(
        self,
        image=None,
        strength: float = 0.8,
        noise_level: float | None = None,
        num_inference_steps: int = 250,
        timesteps=None,
        generator=None,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels=None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
    ):
        """Run the reverse chain from a noised (SDEdit) or noisy (denoising) image, with the pipeline's scheduler:
        ours, or any diffusers scheduler swapped in with ``from_config`` (SDEdit picks and noises the start as
        diffusers' img2img pipelines do; denoising needs a scheduler whose ``set_timesteps`` takes ``timesteps``).

        Args:
            image: PIL image(s), numpy (H, W), (H, W, C) or (B, H, W, C), or tensor (C, H, W) / (B, C, H, W), values
                in [0, 1] (a noisy image may go beyond), channels as the UNet's, any size the UNet takes.
            strength: in (0, 1], how far the image is noised before the chain runs back (ignored with noise_level).
            noise_level: the known standard deviation sigma > 0 of Gaussian noise in ``image`` ([0, 1] pixel units):
                denoise it instead.
            num_inference_steps: steps of the whole chain (respaced by the scheduler's timestep_spacing); SDEdit
                runs the last int(num_inference_steps * strength) of them, denoising those below t*, after t*.
            timesteps: explicit descending timesteps of the whole chain instead.
            generator: `torch.Generator` (or a list, one per image).
            output_type: "pil", "np" (B, H, W, C) or "pt" (B, C, H, W), values in [0, 1].
            return_dict: return a ``DDPMHFImg2ImgPipelineOutput`` rather than a tuple.
            class_labels, guidance_scale: class-conditional models: one class per image (or one image and several
                classes: the image is repeated), classifier-free guidance as in ``DDPMHFPipeline``.
            eta: DDIM's eta, for schedulers whose step takes it.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if noise_level is not None and not noise_level > 0:
            raise ValueError(f"noise_level must be > 0, got {noise_level}")
        if image is None:
            raise ValueError("img2img needs an `image`")
        device, dtype = self._execution_device, self.unet.dtype
        y = (self.image_processor.preprocess(image) * 2 - 1).to(device, dtype)
        channels = self.unet.config.in_channels
        if y.shape[1] != channels:
            raise ValueError(f"the image has {y.shape[1]} channels but the model takes {channels}")
        factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if y.shape[-2] % factor or y.shape[-1] % factor:
            raise ValueError(f"image size {tuple(y.shape[-2:])} is not a multiple of {factor}, which the UNet needs")

        labels = self._class_ids(class_labels, None if len(y) == 1 else len(y))

        guidance_scale = self._guidance_scale(guidance_scale, labels)
        if labels is not None and len(y) == 1:
            y = y.expand(len(labels), *y.shape[1:])
        scheduler = self.scheduler
        custom = "timesteps" in inspect.signature(scheduler.set_timesteps).parameters
        if noise_level is not None and not (custom and getattr(scheduler, "order", 1) == 1):
            # (Heun, order 2, takes timesteps but turns them into other sigmas)
            raise ValueError(f"denoising (noise_level) starts the chain at a timestep of its own, which "
                             f"{type(scheduler).__name__}.set_timesteps cannot take: use a first-order scheduler "
                             "whose set_timesteps takes timesteps (ddpm, dpmsolver++, euler), or strength")
        chain = self._chain(scheduler, num_inference_steps, timesteps, generator, len(y))
        order = getattr(scheduler, "order", 1)
        if noise_level is None:  # as diffusers' img2img pipelines: the last int(n * strength) steps of the n
            skip = strength_start((len(chain) + order - 1) // order, strength) * order  # Heun: 2n - 1 timesteps
            chain = scheduler.timesteps[skip:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(skip)
            noise = randn_tensor(y.shape, generator=generator, device=device, dtype=dtype)
            x = scheduler.add_noise(y, noise, chain[:1])  # x_t0 ~ q(x_t0 | y), Ho eq. 4 (in the scheduler's scale)
        else:
            start = _own_scheduler_class().timestep_of_noise_ratio(scheduler, 2.0 * noise_level)
            scheduler.set_timesteps(timesteps=[start] + [int(t) for t in chain if t < start])
            chain = scheduler.timesteps
            # x_t* = sqrt(alphabar_t*) y: the forward marginal with no noise added, in the scheduler's scale
            x = scheduler.add_noise(y, torch.zeros_like(y), chain[:1])
        extra = step_kwargs(scheduler, generator, eta)
        for t in self.progress_bar(chain):
            x = scheduler.step(self._model_output(x, t, labels, guidance_scale), t, x, **extra).prev_sample
        images = self.image_processor.postprocess(x, output_type=output_type, do_denormalize=[True] * len(x))
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DDPMHFImg2ImgPipelineOutput(images=images, start_timestep=int(chain[0]), unet_calls=len(chain))

# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""Inpainting with an unconditional DDPM, no retraining: RePaint (Lugmayr et al. CVPR 2022) and DDNM-style projection
(Wang et al. ICLR 2023) on top of the scheduler's ancestral step, as a diffusers ``DiffusionPipeline``.

This file imports torch, numpy, diffusers and its siblings ``pipeline_ddpm_hf*.py`` (the shared
``DDPMHFTaskPipelineMixin`` of ``pipeline_ddpm_hf_task_base.py``) only: ``DDPMHFPipeline.save_pretrained`` copies
them all into the saved folder, and diffusers' remote-code loader fetches the siblings with it (it follows a
``from .module import`` of a file beside the pipeline's), so that a process without ddpm_hf can run it with
``DiffusionPipeline.from_pretrained(folder_or_repo,
custom_pipeline="pipeline_ddpm_hf_inpaint", trust_remote_code=True)``.
"""

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

# diffusers copies a local folder's relative imports one level deep: this file names every sibling it needs
from .pipeline_ddpm_hf import OUTPUT_TYPES
from .pipeline_ddpm_hf_denoiser import denoise  # noqa: F401
from .pipeline_ddpm_hf_hub import upload_folder_to_hub  # noqa: F401
from .pipeline_ddpm_hf_layout import DDPMHFLayoutMixin  # noqa: F401
from .pipeline_ddpm_hf_task_base import DDPMHFTaskPipelineMixin

METHODS = ("repaint", "ddnm")


def repaint_path(num_steps, jump_length, jump_n_sample):
    """The indices k of the chain states visited by RePaint's resampling schedule (Lugmayr et al. CVPR 2022, sec. 4.2
    and Alg. 1 lines 9-10): state k is x at the k-th kept timestep tau_k (tau_0 the noisiest, k = num_steps the clean
    image). Consecutive entries differ by one: k -> k + 1 is a reverse step, k -> k - 1 a forward jump.

    The schedule is ``get_schedule_jump`` of the RePaint code (guided_diffusion/scheduler.py, its levels t =
    num_steps - 1 .. -1 are k = num_steps - 1 - t): going down, on reaching level j in {0, jump_length, ...} the
    chain goes back up ``jump_length`` steps, ``jump_n_sample - 1`` times at each place; ``jump_n_sample = 1`` is the
    plain replacement method. No jump starts from the clean image (Alg. 1 resamples only for t > 1). diffusers'
    RePaintScheduler jumps one state later (from the states after levels 0, 10, ..., i.e. the last from the clean
    image).
    """
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    level = num_steps - 1  # the RePaint code's t: state k = num_steps - 1 - level
    path = [0]
    while level >= 0:
        level -= 1
        path.append(num_steps - 1 - level)
        if level >= 0 and jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                path.append(num_steps - 1 - level)
    return path


@dataclass
class DDPMHFInpaintPipelineOutput(ImagePipelineOutput):
    """Output of ``DDPMHFInpaintPipeline``.

    Args:
        images: the inpainted images (list of PIL images, numpy (B, H, W, C) or tensor (B, C, H, W) in [0, 1]).
        unet_calls: UNet evaluations per image (reverse steps, counting repeated ones).
    """

    unet_calls: int = 0


class DDPMHFInpaintPipeline(DDPMHFTaskPipelineMixin, DiffusionPipeline):
    """Fill the masked region of images with an unconditional DDPM (same components as ``DDPMHFPipeline``).

    Mask convention as diffusers' inpainting pipelines: white (1) = repaint, black (0) = keep; a mask that is not
    binary is thresholded at 0.5.

    Methods (``method=``):

    - "repaint" (Lugmayr et al. CVPR 2022, Alg. 1): at every reverse step t -> s the known region is x_s^known ~
      q(x_s | x_0) = N(sqrt(alphabar_s) y, (1 - alphabar_s) I) (Ho eq. 4; Alg. 1 line 5), the unknown region is the
      scheduler's step x_s^unknown ~ p(x_s | x_t) (line 7), x_s = m x_s^unknown + (1 - m) x_s^known (line 8); with
      resampling, the chain goes back up by q(x_t | x_s) = N(sqrt(alphabar_t / alphabar_s) x_s,
      (1 - alphabar_t / alphabar_s) I) (line 10, over skipped steps as in Nichol & Dhariwal sec. 4).
    - "ddnm" (Wang et al. ICLR 2023, DDNM Alg. 1): with A = diag(1 - m) (keep the known pixels) and A+ = A its
      pseudo-inverse, the predicted x_0|t is corrected to x^_0|t = x_0|t - A+(A x_0|t - y) = m x_0|t + (1 - m) y,
      and x_s ~ p(x_s | x_t, x^_0|t) is the scheduler's step with that x_0 (posterior mean Ho eq. 7, the model's
      variance). The same resampling schedule can be added (DDNM's "time-travel", sec. 3.3).

    The step is the scheduler's own, so learned variances, every prediction type and respaced chains work.

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
        self.mask_processor = self._unit_range_processor(do_binarize=True, do_convert_grayscale=True)

    # ------------------------------------------------------------------ pieces

    def _prepare(self, image, mask_image):
        if image is None or mask_image is None:
            raise ValueError("inpainting needs both `image` and `mask_image`")
        y = self.image_processor.preprocess(image) * 2 - 1
        mask = self.mask_processor.preprocess(mask_image)
        channels = self.unet.config.in_channels
        if y.shape[1] != channels:
            raise ValueError(f"the image has {y.shape[1]} channels but the model takes {channels}")
        if mask.shape[1] != 1:
            raise ValueError(f"the mask must have one channel, got {mask.shape[1]}")
        if y.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"mask_image is {tuple(mask.shape[-2:])} (H, W) but image is {tuple(y.shape[-2:])}: they must match"
            )
        factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if y.shape[-2] % factor or y.shape[-1] % factor:
            raise ValueError(f"image size {tuple(y.shape[-2:])} is not a multiple of {factor}, which the UNet needs")
        if len(y) != len(mask) and 1 not in (len(y), len(mask)):
            raise ValueError(f"{len(y)} images and {len(mask)} masks: give one mask, one image, or as many of each")
        batch = max(len(y), len(mask))
        return y.expand(batch, *y.shape[1:]), mask.expand(batch, channels, *mask.shape[2:])

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        image=None,
        mask_image=None,
        method: str = "repaint",
        num_inference_steps: int = 250,
        timesteps=None,
        jump_length: int = 10,
        jump_n_sample: int | None = None,
        generator=None,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels=None,
        guidance_scale: float | None = None,
    ):
        """Inpaint ``image`` where ``mask_image`` is white.

        Args:
            image: PIL image(s), numpy (H, W), (H, W, C) or (B, H, W, C), or tensor (C, H, W) / (B, C, H, W), values
                in [0, 1]; channels as the UNet's, any size the UNet takes (a multiple of its downsampling factor).
            mask_image: same formats and size, one channel; white (>= 0.5) = repaint. One mask for all images, one
                image for all masks, or one each.
            method: "repaint" or "ddnm" (see the class docstring).
            num_inference_steps: reverse steps of the chain (respaced by the scheduler's timestep_spacing).
            timesteps: explicit descending timesteps instead.
            jump_length: RePaint's j, the length of each jump back up.
            jump_n_sample: RePaint's r, how often each stretch is sampled (1 = no resampling). Default 10 for
                "repaint", 1 for "ddnm".
            generator: `torch.Generator` (or a list, one per image).
            output_type: "pil", "np" (B, H, W, C) or "pt" (B, C, H, W), values in [0, 1].
            return_dict: return a ``DDPMHFInpaintPipelineOutput`` rather than a tuple.
            class_labels, guidance_scale: class-conditional models: one class per image (or one image and mask and
                several classes: they are repeated), classifier-free guidance as in ``DDPMHFPipeline``.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        jump_n_sample = (10 if method == "repaint" else 1) if jump_n_sample is None else jump_n_sample
        if int(jump_length) < 1 or int(jump_n_sample) < 1:
            raise ValueError(f"jump_length and jump_n_sample must be >= 1, got {jump_length}, {jump_n_sample}")
        device, dtype = self._execution_device, self.unet.dtype
        y, mask = self._prepare(image, mask_image)
        labels = self._class_ids(class_labels, None if len(y) == 1 else len(y))
        guidance_scale = self._guidance_scale(guidance_scale, labels)
        if labels is not None and len(y) == 1:
            y, mask = y.expand(len(labels), *y.shape[1:]), mask.expand(len(labels), *mask.shape[1:])
        y, mask = y.to(device, dtype), mask.to(device, dtype)

        scheduler = self._ddpm_scheduler()
        chain = self._chain(scheduler, num_inference_steps, timesteps, generator, len(y))
        path = repaint_path(len(chain), int(jump_length), int(jump_n_sample))
        known = 1 - mask

        def project(x0):  # DDNM Alg. 1 (Wang et al. ICLR 2023): x^_0|t = x_0|t - A+(A x_0|t - y), A = A+ = diag(1 - m)
            return x0 - known * (x0 - y)

        x = randn_tensor(y.shape, generator=generator, device=device, dtype=dtype)  # x_T ~ N(0, I)
        calls = 0
        for k, k_next in self.progress_bar(list(zip(path[:-1], path[1:]))):
            if k_next == k + 1:  # reverse step tau_k -> tau_{k+1}
                t = chain[k]
                output = self._model_output(x, t, labels, guidance_scale, scheduler)
                calls += 1
                if method == "ddnm":  # x_s ~ p(x_s | x_t, x^_0|t): the step's posterior mean (Ho eq. 7) of x^_0|t
                    x = scheduler.step(output, t, x, generator=generator, x0_transform=project).prev_sample
                else:
                    unknown = scheduler.step(output, t, x, generator=generator).prev_sample  # Alg. 1 line 7
                    noise = randn_tensor(y.shape, generator=generator, device=device, dtype=dtype)
                    known_x = scheduler.q_sample(y, noise, chain[k_next]) if k_next < len(chain) else y  # line 5
                    x = mask * unknown + known * known_x  # Alg. 1 line 8
            else:  # jump back up tau_k -> tau_{k-1}: q(x_{k-1} | x_k) (Alg. 1 line 10, Ho eq. 4 over skipped steps)
                noise = randn_tensor(y.shape, generator=generator, device=device, dtype=dtype)
                x = scheduler.q_sample_from(x, noise, chain[k_next], chain[k] if k < len(chain) else -1)
        # the output is A+ y + (I - A+ A) x_0 (DDNM eq. for x^_0): the known pixels are the input's exactly
        x = project(x)
        images = self.image_processor.postprocess(x, output_type=output_type, do_denormalize=[True] * len(x))
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DDPMHFInpaintPipelineOutput(images=images, unet_calls=calls)

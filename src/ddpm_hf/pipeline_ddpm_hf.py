# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""DDPM image generation (Ho et al. 2020, Algorithm 2), unconditional or class-conditional with classifier-free
guidance (Ho & Salimans 2022), with any diffusers scheduler swapped in, as a diffusers ``DiffusionPipeline``.

This file imports torch, numpy, diffusers and its siblings ``pipeline_ddpm_hf_denoiser.py`` (guidance and the
scheduler step) and ``pipeline_ddpm_hf_layout.py`` (saving and loading) only: ``save_pretrained`` copies them, and the
scheduler's source file, into the saved folder, so that a process without ddpm_hf installed can load the folder or
its Hub repository with ``DiffusionPipeline.from_pretrained(path_or_repo_id, trust_remote_code=True)`` (diffusers'
remote-code loader follows the relative imports).
"""

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .pipeline_ddpm_hf_denoiser import DEFAULT_GUIDANCE_SCALE, DDPMHFDenoiserMixin, check_scheduler_input, step_kwargs
from .pipeline_ddpm_hf_hub import upload_folder_to_hub  # noqa: F401 (the remote-code loader copies direct imports)
from .pipeline_ddpm_hf_layout import (SCHEDULER_MODULE, SIBLING_MODULES, TASK_PIPELINES,  # noqa: F401 (re-exported)
                                      DDPMHFLayoutMixin, _own_scheduler_class)

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class DDPMHFPipelineOutput(ImagePipelineOutput):
    """Output of ``DDPMHFPipeline``.

    Args:
        images: the samples x_0, as a list of PIL images, a numpy array (B, H, W, C) in [0, 1] or a tensor
            (B, C, H, W) in [0, 1], by ``output_type``.
        intermediates: with ``return_intermediates=True``, the chain x_T, x_{t_1}, ..., x_0 (one entry per reverse
            step plus the starting noise), each in the same format as ``images``; otherwise None.
    """

    intermediates: list | None = None


class DDPMHFPipeline(DDPMHFLayoutMixin, DDPMHFDenoiserMixin, DiffusionPipeline):
    """Pipeline for image generation with a DDPM, unconditional or class-conditional (``class_labels``, classifier-free
    guidance ``guidance_scale``).

    Args:
        unet (`UNet2DModel`): the denoising network eps_theta(x_t, t) (or x_0 / v, by the scheduler's prediction_type),
            called as ``unet(x, t, class_labels=ids)`` when conditional (``num_class_embeds`` set). With twice the
            image channels out it also predicts variances (Nichol & Dhariwal sec. 3.1); these are used by
            DDPMHFScheduler / DDPMScheduler with variance_type "learned"/"learned_range" and dropped otherwise.
        scheduler (`DDPMHFScheduler` or a diffusers scheduler): ours, or any of the ``KarrasDiffusionSchedulers``
            family, e.g. ``DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)``.
        id2label (`dict[int, str]`, optional): class-conditional models only: the name of each class id (as
            diffusers' DiT pipeline), saved in model_index.json.
        null_class_id (`int`, optional): class-conditional models only: the class id that means "no label" (the
            unconditional branch of classifier-free guidance, Ho & Salimans 2022), saved in model_index.json; the
            UNet has ``num_class_embeds = null_class_id + 1``.
        guidance_scale (`float`, optional): a conditional model's default guidance scale, saved in model_index.json.
        guidance_scales (`list[float]`, optional): a distilled student that takes its guidance scale as an input:
            the scales it learned (class c at the j-th scale is class-embedding id c M + j), saved in
            model_index.json; ``guidance_scale`` must then be one of them, and each step is one UNet call.
        num_inference_steps (`int`, optional): the model's default number of steps, saved in model_index.json
            (a distilled few-step student's; None: 1000).
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["image", "model_output"]

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, id2label=None, null_class_id=None,
                 guidance_scale=None, num_inference_steps=None, guidance_scales=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # a conditional model's (an unconditional model's model_index.json is unchanged)
        self._register_conditional(id2label, null_class_id, guidance_scale, guidance_scales)
        if num_inference_steps is not None:  # a few-step student's default (a DDPM's model_index.json is unchanged)
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or \
                    num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
            self.register_to_config(num_inference_steps=num_inference_steps)

    # ------------------------------------------------------------------ sampling

    def _image_shape(self, batch_size):
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.unet.config.in_channels, *size)

    @staticmethod
    def _to_output(image, output_type):
        """Map samples in [-1, 1] of shape (B, C, H, W) to [0, 1] in the requested format."""
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "pil":
            return DiffusionPipeline.numpy_to_pil(image)
        return image

    def check_inputs(self, batch_size, generator, num_inference_steps, timesteps, output_type, callback_inputs):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got a list of {len(generator)} generators for a batch of {batch_size}")
        if timesteps is None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        grid = getattr(self.scheduler.config, "original_inference_steps", None)  # a distilled student's grid
        if timesteps is None and grid is not None and num_inference_steps > grid:
            raise ValueError(f"num_inference_steps {num_inference_steps}: this few-step model samples on a grid of "
                             f"{grid} points; give at most {grid} (its {type(self.scheduler).__name__})")
        check_scheduler_input(self.scheduler, timesteps)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = [k for k in callback_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} not in {self._callback_tensor_inputs}")

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        generator=None,
        num_inference_steps: int | None = None,
        timesteps=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("image",),
        return_intermediates: bool = False,
        class_labels=None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
    ):
        """Generate images: x_T ~ N(0, I) scaled by the scheduler's ``init_noise_sigma``, then for each of the
        scheduler's timesteps x <- scheduler.step(unet(scheduler.scale_model_input(x, t), t), t, x) (Ho Algorithm 2
        with our scheduler; with fewer steps than T, Nichol & Dhariwal sec. 4), as diffusers' own pipelines run any
        scheduler: ``pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`` works, and a
        learned-variance model's variance channels reach only a scheduler that uses them (see ``denoise``).

        Args:
            batch_size: number of images (default: one per class label, else 1).
            generator: a `torch.Generator`, or a list of `batch_size` of them (one per image), for reproducibility.
            num_inference_steps: reverse steps (1..T); ignored when `timesteps` is given. Default: the model's own
                (model_index.json's ``num_inference_steps``: a distilled student's), else 1000.
            timesteps: explicit descending timesteps, passed to ``scheduler.set_timesteps(timesteps=...)``.
            output_type: "pil" (list of PIL images; mode "L" for one channel), "np" (B, H, W, C) or "pt" (B, C, H, W),
                values in [0, 1].
            return_dict: return a ``DDPMHFPipelineOutput`` rather than a tuple.
            callback_on_step_end: called as ``callback(pipe, i, t, tensors)`` after each step with the tensors named
                in `callback_on_step_end_tensor_inputs` ("image" = x_{t-1}, "model_output"); may return a dict with
                a replacement "image".
            return_intermediates: also return x_T and every x_{t-1} (see ``DDPMHFPipelineOutput``).
            class_labels: class-conditional models: one class per image, as ids or names (``self.labels``). Without
                it a conditional model samples its null class (unconditional samples). ValueError on an
                unconditional model, for an unknown name or id, or a count other than `batch_size`.
            guidance_scale: classifier-free guidance scale s in diffusers' convention (Ho & Salimans 2022 eq. 6
                with w = s - 1): 1 = the conditional model alone, larger = stronger guidance; default: the model's
                own (model_index.json's ``guidance_scale``, measured for it), else ``DEFAULT_GUIDANCE_SCALE`` (1 for a
                model without a ``null_class_id``). Used with `class_labels` only.
            eta: DDIM's eta (Song et al. 2021 eq. 16), passed to schedulers whose step takes it.

        Returns:
            ``DDPMHFPipelineOutput`` or ``(images,)`` / ``(images, intermediates)``.
        """
        labels = self._class_ids(class_labels, batch_size)
        guidance_scale = self._guidance_scale(guidance_scale, labels)
        if num_inference_steps is None:
            num_inference_steps = getattr(self.config, "num_inference_steps", None) or 1000
        batch_size = (1 if labels is None else len(labels)) if batch_size is None else batch_size
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs or [])
        self.check_inputs(
            batch_size, generator, num_inference_steps, timesteps, output_type, callback_on_step_end_tensor_inputs
        )
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=list(timesteps))
        else:
            self.scheduler.set_timesteps(num_inference_steps)
        extra = step_kwargs(self.scheduler, generator, eta)
        device = self._execution_device
        dtype = self.unet.dtype
        shape = self._image_shape(batch_size)
        if device.type == "mps":  # randn is not reproducible on mps
            image = randn_tensor(shape, generator=generator, dtype=dtype).to(device)
        else:
            image = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        # x_T in the scheduler's scale (1 for DDPM/DDIM; Euler's depends on the chain: after set_timesteps)
        image = image * self.scheduler.init_noise_sigma

        chain = [image.cpu()] if return_intermediates else None
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_output = self._model_output(image, t, labels, guidance_scale)
            image = self.scheduler.step(model_output, t, image, **extra).prev_sample
            if callback_on_step_end is not None:
                tensors = {"image": image, "model_output": model_output}
                returned = callback_on_step_end(
                    self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                )
                if returned and "image" in returned:
                    image = returned["image"]
            if chain is not None:
                chain.append(image.cpu())

        images = self._to_output(image, output_type)
        intermediates = [self._to_output(x, output_type) for x in chain] if chain is not None else None
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,) if intermediates is None else (images, intermediates)
        return DDPMHFPipelineOutput(images=images, intermediates=intermediates)

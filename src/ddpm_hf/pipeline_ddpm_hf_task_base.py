# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""The base of the task pipelines (``TASK_PIPELINES``: inpainting, super-resolution, img2img/denoising): loading and
saving as a ``DDPMHFPipeline`` folder, the model call, the chain's timesteps and the DDPM step they build on.

Shipped with the pipelines (``DDPMHFPipeline.save_pretrained`` copies it; ``SIBLING_MODULES``): torch, diffusers and
its siblings only. No ``DiffusionPipeline`` subclass lives here.
"""

from .pipeline_ddpm_hf import DDPMHFPipeline, _own_scheduler_class
from .pipeline_ddpm_hf_denoiser import DDPMHFDenoiserMixin, check_scheduler_input


class DDPMHFTaskPipelineMixin(DDPMHFDenoiserMixin):
    """What the task pipelines (``TASK_PIPELINES``) share: loading and saving as a ``DDPMHFPipeline`` folder, the UNet
    call, and the scheduler whose ``step`` takes ``x0_transform``.

    A task file imports it with ``from .pipeline_ddpm_hf_task_base import DDPMHFTaskPipelineMixin``, which works
    installed (a package-relative import) and as remote code: diffusers' loader (``get_cached_module_file``) finds
    the relative imports (``get_relative_imports``) and copies the siblings from the folder, or downloads them from
    the Hub repo, into the same dynamic-module package. From a local folder it copies only the files the task file
    itself imports, not theirs: so a task file also imports from ``pipeline_ddpm_hf`` and
    ``pipeline_ddpm_hf_denoiser``, which this file needs. It is not a ``DiffusionPipeline``, so diffusers still finds
    exactly one pipeline class in a task file (``find_pipeline_class``).
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved DDPMHFPipeline folder or Hub repo as this pipeline: ``DDPMHFPipeline.from_pretrained`` (no
        folder code runs when ddpm_hf is installed) then ``from_pipe``."""
        return cls.from_pipe(DDPMHFPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs), torch_dtype=None)

    def save_pretrained(self, save_directory, **kwargs):
        """Save as a ``DDPMHFPipeline`` folder (which carries the task files, and ``id2label`` / ``null_class_id`` of
        a conditional model): load it back with ``from_pretrained``."""
        conditional = {k: getattr(self.config, k) for k in ("id2label", "null_class_id") if k in self.config}
        pipe = DDPMHFPipeline(unet=self.unet, scheduler=self.scheduler, **conditional)
        pipe.save_pretrained(save_directory, **kwargs)

    def _unit_range_processor(self, **kwargs):
        """A ``VaeImageProcessor`` that takes images as [0, 1] values and leaves the mapping to [-1, 1] to the pipeline:
        diffusers' normalisation skips inputs with negative values (a noisy image has some)."""
        from diffusers.image_processor import VaeImageProcessor

        return VaeImageProcessor(vae_scale_factor=1, do_resize=False, vae_latent_channels=-1, do_normalize=False,
                                 **kwargs)

    @staticmethod
    def _chain(scheduler, num_inference_steps, timesteps, generator, batch):
        """The reverse chain's timesteps (a list, noisiest first) after ``scheduler.set_timesteps`` with ``timesteps``
        if given, else ``num_inference_steps``; a list of generators must hold one per image of the ``batch``."""
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        check_scheduler_input(scheduler, timesteps)
        if timesteps is not None:
            scheduler.set_timesteps(timesteps=list(timesteps))
        else:
            scheduler.set_timesteps(num_inference_steps)
        return scheduler.timesteps.tolist()

    def _ddpm_scheduler(self):
        """The scheduler whose ``step`` takes ``x0_transform`` and has the maths surface (``predict_x0``,
        ``posterior``, ...): ours, or diffusers' DDPMScheduler as a DDPMHFScheduler with the same config
        (``from_config`` swaps the two; ours adds no noise at the last step of a chain ending above 0)."""
        if hasattr(self.scheduler, "posterior"):
            return self.scheduler
        return _own_scheduler_class().from_config(self.scheduler.config)

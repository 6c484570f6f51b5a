# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""Unconditional DDPM image generation (Ho et al. 2020, Algorithm 2) as a diffusers ``DiffusionPipeline``.

This file is self-contained (it imports torch, numpy and diffusers only): ``save_pretrained`` copies it, and the
scheduler's source file, into the saved folder, so that a process without ddpm_hf installed can load the folder or
its Hub repository with ``DiffusionPipeline.from_pretrained(path_or_repo_id, trust_remote_code=True)``.
"""

import importlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass

import diffusers
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt")
SCHEDULER_MODULE = "scheduling_ddpm_hf"  # file stem of the scheduler's source, beside this file
_FROM_PRETRAINED_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "torch_dtype", "variant", "unet",
                           "scheduler", "use_safetensors", "force_download", "proxies", "trust_remote_code")


def _edit_json(path, edit):
    """Apply ``edit(dict)`` to a JSON file in place."""
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    edit(content)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, sort_keys=True)
        f.write("\n")


def _own_scheduler_class():
    """DDPMHFScheduler from the module beside this one: ``ddpm_hf.scheduling_ddpm_hf`` when this file is the installed
    package's, ``diffusers_modules.<...>.scheduling_ddpm_hf`` when it was loaded as remote code."""
    package = __name__.rpartition(".")[0]
    module = importlib.import_module(f"{package}.{SCHEDULER_MODULE}" if package else SCHEDULER_MODULE)
    return module.DDPMHFScheduler


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


class DDPMHFPipeline(DiffusionPipeline):
    """Pipeline for unconditional image generation with a DDPM.

    Args:
        unet (`UNet2DModel`): the denoising network eps_theta(x_t, t) (or x_0 / v, by the scheduler's prediction_type).
            With twice the image channels out it also predicts variances (Nichol & Dhariwal sec. 3.1); these are
            used when the scheduler's variance_type is "learned"/"learned_range" and dropped otherwise.
        scheduler (`DDPMHFScheduler` or diffusers' `DDPMScheduler`, or any scheduler with the same API).
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["image", "model_output"]

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, save_directory, safe_serialization=True, variant=None, push_to_hub=False, **kwargs):
        """Save in the remote-code layout, loadable with or without ddpm_hf installed:

        model_index.json  ``_class_name: ["pipeline_ddpm_hf", "DDPMHFPipeline"]``, ``scheduler: ["scheduling_ddpm_hf",
        "DDPMHFScheduler"]`` (a diffusers scheduler keeps its ``["diffusers", Class]`` entry), ``unet: ["diffusers",
        "UNet2DModel"]``; pipeline_ddpm_hf.py (this file); scheduler/scheduling_ddpm_hf.py and scheduler_config.json;
        unet/config.json and diffusion_pytorch_model.safetensors.

        With ``push_to_hub=True`` the folder is then uploaded (kwargs: repo_id, private, token, commit_message).
        """
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "private", "token", "commit_message") if k in kwargs}
        super().save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant, **kwargs)
        # from_pretrained records where each component came from; a saved (or pushed) folder must not carry that path
        for config_name in (os.path.join("unet", "config.json"), os.path.join("scheduler", "scheduler_config.json")):
            config_path = os.path.join(save_directory, config_name)
            if os.path.isfile(config_path):
                _edit_json(config_path, lambda config: config.pop("_name_or_path", None))
        pipeline_source = inspect.getsourcefile(type(self))
        pipeline_stem = os.path.splitext(os.path.basename(pipeline_source))[0]
        shutil.copyfile(pipeline_source, os.path.join(save_directory, pipeline_stem + ".py"))
        scheduler_source = inspect.getsourcefile(type(self.scheduler))
        ours = os.path.basename(scheduler_source) == SCHEDULER_MODULE + ".py"
        if ours:
            shutil.copyfile(scheduler_source, os.path.join(save_directory, "scheduler", SCHEDULER_MODULE + ".py"))

        def point_at_sources(index):
            index.pop("_name_or_path", None)
            index["_class_name"] = [pipeline_stem, type(self).__name__]
            if ours:
                index["scheduler"] = [SCHEDULER_MODULE, type(self.scheduler).__name__]

        _edit_json(os.path.join(save_directory, "model_index.json"), point_at_sources)
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = hub_kwargs.get("repo_id") or os.path.basename(os.path.abspath(save_directory))
            token = hub_kwargs.get("token")
            repo_id = create_repo(repo_id, private=hub_kwargs.get("private"), token=token, exist_ok=True).repo_id
            upload_folder(
                repo_id=repo_id,
                folder_path=save_directory,
                token=token,
                commit_message=hub_kwargs.get("commit_message") or "Upload DDPMHFPipeline",
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved pipeline (a folder or a Hub repo id) with this module's own classes.

        Unlike ``DiffusionPipeline.from_pretrained``, this executes no code from the folder or repository, so it
        needs no ``trust_remote_code``. It reads our layout (see ``save_pretrained``) and diffusers' DDPMPipeline
        layout (e.g. google/ddpm-cifar10-32): a saved ``DDPMScheduler`` or ``DDPMHFScheduler`` becomes a
        ``DDPMHFScheduler`` with the same config; any other diffusers scheduler is loaded as its own class.

        Args:
            pretrained_model_name_or_path: a local folder or a Hub repo id ("namespace/name").
            kwargs: revision, cache_dir, token, local_files_only, force_download, proxies (Hub download);
                torch_dtype, variant, use_safetensors (UNet weights); unet, scheduler (ready components).
        """
        unknown = sorted(set(kwargs) - set(_FROM_PRETRAINED_KWARGS))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments {unknown}")
        kwargs.pop("trust_remote_code", None)  # nothing remote is executed either way
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            hub = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only",
                                               "force_download", "proxies") if k in kwargs}
            path = snapshot_download(path, **hub)
        index_path = os.path.join(path, "model_index.json")
        if not os.path.isfile(index_path):
            raise OSError(f"{pretrained_model_name_or_path} has no model_index.json: not a saved pipeline")
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        for name in ("unet", "scheduler"):
            if name not in index and name not in kwargs:
                raise OSError(f"{pretrained_model_name_or_path}: model_index.json has no {name!r} component")

        unet = kwargs.get("unet")
        if unet is None:
            unet_kwargs = {k: kwargs[k] for k in ("torch_dtype", "variant", "use_safetensors") if k in kwargs}
            unet = UNet2DModel.from_pretrained(path, subfolder="unet", **unet_kwargs)
        scheduler = kwargs.get("scheduler")
        if scheduler is None:
            library, class_name = index["scheduler"]
            if class_name in ("DDPMScheduler", "DDPMHFScheduler"):
                scheduler_class = _own_scheduler_class()
            elif library == "diffusers" and hasattr(diffusers, class_name):
                scheduler_class = getattr(diffusers, class_name)
            else:
                raise ValueError(f"cannot load scheduler {library}.{class_name} without running its code")
            scheduler = scheduler_class.from_pretrained(path, subfolder="scheduler")
        pipe = cls(unet=unet, scheduler=scheduler)
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

    # ------------------------------------------------------------------ sampling

    def _image_shape(self, batch_size):
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.unet.config.in_channels, *size)

    def _model_output(self, image, t):
        """The UNet output, keeping the variance channels only when the scheduler uses them."""
        output = self.unet(image, t).sample
        channels = image.shape[1]
        if output.shape[1] == 2 * channels and getattr(self.scheduler.config, "variance_type", None) not in (
            "learned",
            "learned_range",
        ):
            output = output[:, :channels]
        return output

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
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = [k for k in callback_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} not in {self._callback_tensor_inputs}")

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator=None,
        num_inference_steps: int = 1000,
        timesteps=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("image",),
        return_intermediates: bool = False,
    ):
        """Generate images: x_T ~ N(0, I), then x_{t-1} = scheduler.step(unet(x_t, t), t, x_t) for the scheduler's
        timesteps (Ho Algorithm 2; with fewer steps than T, Nichol & Dhariwal sec. 4).

        Args:
            batch_size: number of images.
            generator: a `torch.Generator`, or a list of `batch_size` of them (one per image), for reproducibility.
            num_inference_steps: reverse steps (1..T); ignored when `timesteps` is given.
            timesteps: explicit descending timesteps, passed to ``scheduler.set_timesteps(timesteps=...)``.
            output_type: "pil" (list of PIL images; mode "L" for one channel), "np" (B, H, W, C) or "pt" (B, C, H, W),
                values in [0, 1].
            return_dict: return a ``DDPMHFPipelineOutput`` rather than a tuple.
            callback_on_step_end: called as ``callback(pipe, i, t, tensors)`` after each step with the tensors named
                in `callback_on_step_end_tensor_inputs` ("image" = x_{t-1}, "model_output"); may return a dict with
                a replacement "image".
            return_intermediates: also return x_T and every x_{t-1} (see ``DDPMHFPipelineOutput``).

        Returns:
            ``DDPMHFPipelineOutput`` or ``(images,)`` / ``(images, intermediates)``.
        """
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs or [])
        self.check_inputs(
            batch_size, generator, num_inference_steps, timesteps, output_type, callback_on_step_end_tensor_inputs
        )
        device = self._execution_device
        dtype = self.unet.dtype
        shape = self._image_shape(batch_size)
        if device.type == "mps":  # randn is not reproducible on mps
            image = randn_tensor(shape, generator=generator, dtype=dtype).to(device)
        else:
            image = randn_tensor(shape, generator=generator, device=device, dtype=dtype)

        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=list(timesteps))
        else:
            self.scheduler.set_timesteps(num_inference_steps)

        chain = [image.cpu()] if return_intermediates else None
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_output = self._model_output(image, t)
            image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample
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

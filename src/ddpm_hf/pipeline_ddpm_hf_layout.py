# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""How a ddpm-hf pipeline is saved and loaded (``DDPMHFLayoutMixin``): the remote-code layout that
``save_pretrained`` writes (the pipeline's and scheduler's source files beside the weights, model_index.json
pointing at them), and ``from_pretrained`` / ``load_config`` / ``download``, which read that layout and diffusers'
DDPMPipeline layout as this process's own classes, running no code from the folder.

Shipped with the pipelines (``DDPMHFPipeline.save_pretrained`` copies it; ``SIBLING_MODULES``): the standard library,
diffusers and its sibling ``pipeline_ddpm_hf_hub.py`` (the upload) only.
"""

import importlib
import inspect
import json
import os
import shutil

from diffusers.utils import logging

from .pipeline_ddpm_hf_hub import upload_folder_to_hub

logger = logging.get_logger(__name__)

SCHEDULER_MODULE = "scheduling_ddpm_hf"  # file stem of the scheduler's source, beside this file
# File stems of the task pipelines beside this file (inpainting, super-resolution, img2img/denoising): save_pretrained
# copies them into the folder, where DiffusionPipeline.from_pretrained(..., custom_pipeline=stem) finds them.
TASK_PIPELINES = ("pipeline_ddpm_hf_inpaint", "pipeline_ddpm_hf_super_resolution", "pipeline_ddpm_hf_img2img")
# File stems of the modules beside this file that it and the task pipelines import relatively (no pipeline class).
SIBLING_MODULES = ("pipeline_ddpm_hf_denoiser", "pipeline_ddpm_hf_layout", "pipeline_ddpm_hf_task_base",
                   "pipeline_ddpm_hf_hub")
# Scheduler classes of a saved pipeline that this module loads as its own DDPMHFScheduler (with the same config).
_OWN_SCHEDULER_NAMES = ("DDPMScheduler", "DDPMHFScheduler")
# from_pretrained arguments that locate a Hub repository's files (DiffusionPipeline.download's own names).
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


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


class DDPMHFLayoutMixin:
    """Saving and loading of ``DDPMHFPipeline`` and the task pipelines (a mixin before ``DiffusionPipeline``)."""

    def save_pretrained(self, save_directory, safe_serialization=True, variant=None, push_to_hub=False, **kwargs):
        """Save in the remote-code layout, loadable with or without ddpm_hf installed:

        model_index.json  ``_class_name: ["pipeline_ddpm_hf", "DDPMHFPipeline"]``, ``scheduler: ["scheduling_ddpm_hf",
        "DDPMHFScheduler"]`` (a diffusers scheduler keeps its ``["diffusers", Class]`` entry), ``unet: ["diffusers",
        "UNet2DModel"]``; pipeline_ddpm_hf.py (this file), the task pipelines beside it (``TASK_PIPELINES``) and the
        modules they import (``SIBLING_MODULES``);
        scheduler/scheduling_ddpm_hf.py and scheduler_config.json;
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
        for stem in TASK_PIPELINES + SIBLING_MODULES:
            task_source = os.path.join(os.path.dirname(pipeline_source), stem + ".py")
            if os.path.isfile(task_source):
                shutil.copyfile(task_source, os.path.join(save_directory, stem + ".py"))
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
            repo_id = hub_kwargs.pop("repo_id", None) or os.path.basename(os.path.abspath(save_directory))
            upload_folder_to_hub(save_directory, repo_id, **hub_kwargs)

    @classmethod
    def download(cls, pretrained_model_name, **kwargs):
        """Download a Hub repository (``huggingface_hub.snapshot_download``) and return its local folder.

        ``DiffusionPipeline.download`` resolves the pipeline class while it downloads, which for our layout means
        importing the repository's ``pipeline_ddpm_hf.py`` (or refusing without ``trust_remote_code``); this class
        needs no class from the repository, so it only fetches the files.

        Args:
            pretrained_model_name: a Hub repo id ("namespace/name").
            kwargs: revision, cache_dir, token, local_files_only, force_download, proxies; the other arguments of
                ``DiffusionPipeline.download`` (variant, use_safetensors, ...) are accepted and do not narrow the
                download.
        """
        from huggingface_hub import snapshot_download

        hub = {k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None}
        return snapshot_download(str(pretrained_model_name), **hub)

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, return_unused_kwargs=False, return_commit_hash=False,
                    **kwargs):
        """``model_index.json`` as this class loads it (see ``_as_installed``): ``ConfigMixin.load_config`` with the
        entries that name code saved in the folder replaced by this process's own classes."""
        outputs = super().load_config(pretrained_model_name_or_path, return_unused_kwargs=return_unused_kwargs,
                                      return_commit_hash=return_commit_hash, **kwargs)
        if isinstance(outputs, tuple):
            return (cls._as_installed(outputs[0]), *outputs[1:])
        return cls._as_installed(outputs)

    @classmethod
    def _as_installed(cls, index):
        """Rewrite a model_index.json dict so that DiffusionPipeline.from_pretrained imports nothing from the folder:

        - ``_class_name`` becomes ``cls.__name__``: a list ``["pipeline_ddpm_hf", "DDPMHFPipeline"]`` would make
          diffusers import the folder's ``pipeline_ddpm_hf.py`` as a custom pipeline;
        - a ``DDPMScheduler`` or ``DDPMHFScheduler`` scheduler entry (``["diffusers", "DDPMScheduler"]``,
          ``["scheduling_ddpm_hf", "DDPMHFScheduler"]``) becomes ``[module, "DDPMHFScheduler"]`` with the module this
          file imports its scheduler from (``ddpm_hf.scheduling_ddpm_hf`` when installed), already imported, which
          diffusers resolves in-process (``_get_library_or_raise``) like any component class saved from an imported
          module. Other entries (``["diffusers", "DDIMScheduler"]``, ``["diffusers", "UNet2DModel"]``) are kept.
        """
        index = dict(index)
        if "_class_name" in index:
            index["_class_name"] = cls.__name__
        entry = index.get("scheduler")
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] in _OWN_SCHEDULER_NAMES:
            scheduler_class = _own_scheduler_class()
            index["scheduler"] = [scheduler_class.__module__, scheduler_class.__name__]
        return index

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved pipeline (a folder or a Hub repo id) as this class, with ``DiffusionPipeline.from_pretrained``.

        All of diffusers' arguments work as they do there (torch_dtype/dtype, device_map, low_cpu_mem_usage, variant,
        use_safetensors, revision, token, ready ``unet=`` / ``scheduler=`` components, ...; unknown ones are warned
        about and ignored), with two differences, so that no code from the folder or repository runs and no
        ``trust_remote_code`` is needed:

        - the pipeline class is always ``cls``, and a saved ``DDPMScheduler`` or ``DDPMHFScheduler`` becomes this
          module's ``DDPMHFScheduler`` with the same config (see ``load_config``); any other diffusers scheduler is
          loaded as its own class. This reads our layout (see ``save_pretrained``) and diffusers' DDPMPipeline layout
          (e.g. google/ddpm-cifar10-32).
        - a Hub repository is fetched with ``download`` (a plain snapshot). ``trust_remote_code`` is accepted and
          ignored (diffusers is never asked to run remote code); ``custom_pipeline`` is refused.
        """
        if kwargs.pop("custom_pipeline", None) is not None:
            raise ValueError(
                f"{cls.__name__}.from_pretrained always loads {cls.__name__} and runs no code from the folder; use "
                "DiffusionPipeline.from_pretrained(..., custom_pipeline=...) to load a custom pipeline"
            )
        kwargs.pop("trust_remote_code", None)
        name_or_path = str(pretrained_model_name_or_path)
        folder = name_or_path if os.path.isdir(name_or_path) else cls.download(name_or_path, **kwargs)
        if "scheduler" not in kwargs:
            entry = super().load_config(folder).get("scheduler")  # as saved, before _as_installed
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] == "DDPMScheduler":
                logger.info(
                    f"{name_or_path}: loading the saved diffusers DDPMScheduler ({entry[0]}.{entry[1]}) as "
                    f"{_own_scheduler_class().__name__} with the same config"
                )
        pipe = super().from_pretrained(folder, **kwargs)
        pipe.register_to_config(_name_or_path=name_or_path)
        return pipe

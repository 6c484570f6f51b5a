"""ddpm-hf: a DDPM scheduler, likelihood, UNet presets and pipeline written from the equations, for diffusers.

The names below are imported on first use (PEP 562, as diffusers' own ``_LazyModule``): ``import ddpm_hf`` and the
``ddpm-hf`` command's parsers do not pay for torch, diffusers and every pipeline before one is needed.
"""

import importlib

__version__ = "0.3.0"

_EXPORTS = {
    "pipeline_ddpm_hf": ("DDPMHFPipeline", "DDPMHFPipelineOutput"),
    "pipeline_ddpm_hf_img2img": ("DDPMHFImg2ImgPipeline",),
    "pipeline_ddpm_hf_inpaint": ("DDPMHFInpaintPipeline",),
    "pipeline_ddpm_hf_super_resolution": ("DDPMHFSuperResolutionPipeline",),
    "scheduling_ddpm_hf": ("DDPMHFScheduler",),
    "unet_configs": ("UNET_PRESETS", "build_unet", "unet_config"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # the next access finds it directly
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""ddpm-hf: a DDPM scheduler, likelihood, UNet presets and pipeline written from the equations, for diffusers."""

from .pipeline_ddpm_hf import DDPMHFPipeline, DDPMHFPipelineOutput
from .pipeline_ddpm_hf_img2img import DDPMHFImg2ImgPipeline
from .pipeline_ddpm_hf_inpaint import DDPMHFInpaintPipeline
from .pipeline_ddpm_hf_super_resolution import DDPMHFSuperResolutionPipeline
from .scheduling_ddpm_hf import DDPMHFScheduler
from .unet_configs import UNET_PRESETS, build_unet, unet_config

__version__ = "0.2.0"

__all__ = [
    "DDPMHFImg2ImgPipeline",
    "DDPMHFInpaintPipeline",
    "DDPMHFPipeline",
    "DDPMHFPipelineOutput",
    "DDPMHFSuperResolutionPipeline",
    "DDPMHFScheduler",
    "UNET_PRESETS",
    "build_unet",
    "unet_config",
    "__version__",
]

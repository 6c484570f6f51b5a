"""Named UNet2DModel configurations: the DDPM paper's networks and small ones that train on a CPU.

``build_unet(name, **overrides)`` returns a diffusers ``UNet2DModel``. The paper presets reproduce the published
conversions of the DDPM checkpoints (google/ddpm-cifar10-32, google/ddpm-celebahq-256, google/ddpm-church-256):
Ho et al. 2020 sec. 4 / appendix B, a PixelCNN++-style U-Net with group norm, sinusoidal timestep embedding
(``flip_sin_to_cos=False, freq_shift=1`` is the original embedding) and self-attention at 16x16.
"""

import copy

# Shared by every preset: the DDPM timestep embedding and block details of the original implementation.
_DDPM_COMMON = dict(
    act_fn="silu",
    center_input_sample=False,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    mid_block_scale_factor=1,
    norm_eps=1e-6,
    norm_num_groups=32,
    time_embedding_type="positional",
    attention_head_dim=None,
)


def _levels(resolution, channels, attention_at, layers=2, dropout=0.0, in_channels=3):
    """A U-Net with one level per entry of ``channels``, halving the resolution between levels and attending at
    the levels whose resolution is in ``attention_at``."""
    sizes = [resolution // 2**i for i in range(len(channels))]
    down = ["AttnDownBlock2D" if s in attention_at else "DownBlock2D" for s in sizes]
    up = ["AttnUpBlock2D" if s in attention_at else "UpBlock2D" for s in reversed(sizes)]
    return dict(
        _DDPM_COMMON,
        sample_size=resolution,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(channels),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        layers_per_block=layers,
        dropout=dropout,
    )


UNET_PRESETS = {
    # Ho et al. 2020, CIFAR-10: ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16x16, dropout 0.1.
    "ddpm-cifar10-32": _levels(32, (128, 256, 256, 256), {16}, dropout=0.1),
    # Ho et al. 2020, 256x256 CelebA-HQ and LSUN: ch_mult (1, 1, 2, 2, 4, 4), attention at 16x16.
    "ddpm-celebahq-256": _levels(256, (128, 128, 256, 256, 512, 512), {16}),
    "ddpm-lsun-256": _levels(256, (128, 128, 256, 256, 512, 512), {16}),
    # Nichol & Dhariwal 2021 CIFAR-10 (improved-diffusion README: 128 channels, ch_mult (1, 2, 2, 2), 3 res blocks,
    # attention at 16x16 and 8x8, dropout 0.3), as a UNet2DModel: diffusers' blocks, not improved-diffusion's
    # scale-shift norm and multi-head attention, so the parameter count differs from the paper's.
    "improved-ddpm-cifar10-32": _levels(32, (128, 256, 256, 256), {16, 8}, layers=3, dropout=0.3),
    # diffusers' examples/unconditional_image_generation/train_unconditional.py builds this UNet for every run: six
    # levels (128, 128, 256, 256, 512, 512), attention in the fifth down and second up block, UNet2DModel defaults
    # otherwise; it needs a resolution divisible by 32.
    "diffusers-unconditional": dict(
        sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    # Small networks for a CPU; grayscale by default (channels=3 for RGB). cpu-8 (1.6M parameters) trains at about
    # 2.2x the images/s of a (64, 128, 128) variant on 2 cores, which buys more steps in the digits demo.
    "cpu-8": _levels(8, (32, 64, 64), {4}, in_channels=1),
    # cpu-8 at half the width (0.41M parameters, 8 groups of 2 channels in its GroupNorms): about 2.1x cpu-8's steps
    # per second on 1 or 2 cores; at equal training time it learns faster (digits FD 1.57 against 1.98 at half the
    # demo's time) and reaches a better held-out bound, and ties on held-out digits at the full time (the digits
    # recipe's UNet since 2026-12-03; BENCHMARKS.md "Training recipe search").
    "cpu-8-small": dict(_levels(8, (16, 32, 32), {4}, in_channels=1), norm_num_groups=8),
    "cpu-16": _levels(16, (32, 64, 128), {8}, in_channels=1),
    "cpu-28": _levels(28, (32, 64, 128), {14}, in_channels=1),
    # for 28x28 (MNIST): three levels 28 -> 14 -> 7 at (16, 32, 64) channels, attention at 7x7, 8 groups per
    # GroupNorm (0.99M parameters); about 2.3x cpu-28's training images/s on 2 cores (BENCHMARKS.md "MNIST")
    "cpu-28-small": dict(_levels(28, (16, 32, 64), {7}, in_channels=1), norm_num_groups=8),
    "cpu-32": _levels(32, (64, 128, 128, 128), {16}, in_channels=1),
}


def resolution_divisor(config):
    """The UNet halves the image between levels, so the resolution must be a multiple of 2^(levels - 1)."""
    return 2 ** (len(config["down_block_types"]) - 1)


def check_resolution(name, resolution):
    """Raise ConfigError (a ValueError), naming sizes that work, if preset ``name`` cannot take images of
    ``resolution`` pixels."""
    from .errors import ConfigError

    divisor = resolution_divisor(UNET_PRESETS[name])
    if resolution % divisor:
        fits = [divisor * k for k in range(1, 5)] + [divisor * 8]
        raise ConfigError("{unet_preset} {name} halves the image {halvings} times, so it needs a resolution "
                          "divisible by {divisor} (e.g. {fits}); got {value}", name=name, divisor=divisor,
                          halvings=len(UNET_PRESETS[name]["down_block_types"]) - 1,
                          fits=", ".join(map(str, fits)), value=resolution)


def unet_config(name, channels=None, learned_variance=False, **overrides):
    """The UNet2DModel config of a preset, as a dict.

    Args:
        name: a key of ``UNET_PRESETS``.
        channels: image channels (1 grayscale, 3 RGB); sets in_channels and out_channels.
        learned_variance: double out_channels so the network also outputs the variance channels
            (variance_type "learned" / "learned_range", Nichol & Dhariwal sec. 3.1).
        overrides: any other UNet2DModel argument (sample_size, dropout, ...).
    """
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(UNET_PRESETS)}")
    config = copy.deepcopy(UNET_PRESETS[name])
    if channels is not None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        config["in_channels"] = config["out_channels"] = int(channels)
    config.update(overrides)
    if learned_variance:
        config["out_channels"] = 2 * config["in_channels"]
    return config


def build_unet(name, channels=None, learned_variance=False, **overrides):
    """A freshly initialised diffusers ``UNet2DModel`` for the preset ``name`` (see ``unet_config``)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**unet_config(name, channels=channels, learned_variance=learned_variance, **overrides))

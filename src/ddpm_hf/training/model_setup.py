"""What a training run builds from its config before the loop: the UNet2DModel sized to the data (preset or config
file, learned-variance channels, class embeddings with the null class) and the betas of a shifted cosine schedule."""


def unet_for_data(config, channels, resolution):
    """The UNet2DModel of ``unet_config_for_data``."""
    from diffusers import UNet2DModel

    return UNet2DModel.from_config(unet_config_for_data(config, channels, resolution))


def shifted_betas(config):
    """The betas of the shifted cosine (``noise_schedules``) as a list for the scheduler's ``trained_betas``, or None
    without ``cosine_logsnr_shift``."""
    if config.cosine_logsnr_shift is None:
        return None
    from ..noise_schedules import shifted_cosine_betas

    return shifted_cosine_betas(config.ddpm_num_steps, config.cosine_logsnr_shift).tolist()


def unet_config_for_data(config, channels, resolution):
    """The UNet2DModel config (a dict) of ``unet_preset`` (or ``model_config_name_or_path``) sized to the data's
    channels and resolution, with doubled output channels for learned variances, ``dropout`` if given and, for a
    class-conditional run of K classes, ``num_class_embeds`` K + 1 (the last id is the null class)."""
    from diffusers import UNet2DModel

    from ..unet_configs import unet_config

    learned = config.variance_type == "learned_range"
    extra = {} if config.dropout is None else {"dropout": config.dropout}
    if config.class_conditional:  # one embedding per class and one for the null class, id K (Ho & Salimans 2022)
        extra.update(num_class_embeds=len(config.class_names) + 1, class_embed_type=None)
    if config.model_config_name_or_path:
        unet = dict(UNet2DModel.load_config(config.model_config_name_or_path))
        unet.update(in_channels=channels, out_channels=channels * (2 if learned else 1), sample_size=resolution,
                    **extra)
        return unet
    return unet_config(config.unet_preset, channels=channels, learned_variance=learned, sample_size=resolution,
                       **extra)

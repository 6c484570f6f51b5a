"""--recipe: named sets of defaults that explicit flags override, resolved at parse time and checked at start."""

import pytest

from ddpm_hf import build_unet
from ddpm_hf.recipes import RECIPES
from ddpm_hf.cli.train import parse_args


def test_digits_is_the_default_for_the_embedded_digits():
    args = parse_args([])
    assert args.recipe == "digits" and args.recipe_overrides == ()
    for key, value in RECIPES["digits"].items():
        assert getattr(args, key) == value, key
    assert args.unet_preset == "cpu-8-small" and args.learning_rate == 1e-3 and args.max_train_steps == 3000


def test_diffusers_is_the_default_for_other_data():
    """train_unconditional.py's argparse defaults and UNet for any dataset that is not the digits."""
    args = parse_args(["--dataset_name", "someone/faces"])
    assert args.recipe == "diffusers"
    assert (args.resolution, args.train_batch_size, args.learning_rate, args.lr_warmup_steps) == (64, 16, 1e-4, 500)
    assert (args.num_epochs, args.max_train_steps) == (100, None)  # 100 epochs, steps follow from the data
    assert args.ddpm_beta_schedule == "linear" and args.variance_type == "fixed_small"
    assert (args.save_images_epochs, args.save_model_epochs, args.use_ema) == (10, 10, False)  # store_true there
    assert args.unet_preset == "diffusers-unconditional"
    # train_unconditional.py's UNet2DModel, built with its own arguments here (examples/unconditional_image_generation)
    from diffusers import UNet2DModel

    theirs = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
                         block_out_channels=(128, 128, 256, 256, 512, 512),
                         down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                                           "AttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D",
                                         "UpBlock2D"))
    assert build_unet("diffusers-unconditional").num_parameters() == theirs.num_parameters()
    assert dict(build_unet("diffusers-unconditional").config) == dict(theirs.config)


def test_paper_recipes_and_explicit_flags_win():
    args = parse_args(["--recipe", "ddpm-cifar10", "--learning_rate", "1e-3", "--no-random_flip"])
    assert args.learning_rate == 1e-3 and args.random_flip is False
    assert args.recipe_overrides == ("learning_rate", "random_flip")
    assert (args.train_batch_size, args.lr_warmup_steps, args.max_train_steps, args.ema_max_decay) == \
        (128, 5000, 800_000, 0.9999)
    assert (args.ddpm_num_steps, args.ddpm_beta_schedule, args.dropout) == (1000, "linear", 0.1)
    assert build_unet(args.unet_preset).num_parameters() == 35_746_307  # Ho et al.'s CIFAR-10 network
    improved = parse_args(["--recipe", "improved-ddpm-cifar10"])
    assert (improved.ddpm_beta_schedule, improved.variance_type, improved.learning_rate) == \
        ("squaredcos_cap_v2", "learned_range", 1e-4)
    assert improved.ddpm_num_steps == 4000 and improved.dropout == 0.3
    celeb = parse_args(["--recipe", "ddpm-celebahq-256", "--max_train_steps", "10"])
    assert (celeb.resolution, celeb.learning_rate, celeb.train_batch_size) == (256, 2e-5, 64)
    assert celeb.max_train_steps == 10 and celeb.recipe_overrides == ("max_train_steps",)
    # a step budget given as epochs replaces the recipe's step budget
    epochs = parse_args(["--num_epochs", "3"])
    assert epochs.num_epochs == 3 and epochs.max_train_steps is None and epochs.recipe_overrides == ("num_epochs",)
    # the recipe samples with all T steps: a smaller T given alone takes its sampling steps down with it; both
    # given explicitly are still checked
    shorter = parse_args(["--ddpm_num_steps", "500"])
    assert (shorter.ddpm_num_steps, shorter.ddpm_num_inference_steps) == (500, 500)
    assert parse_args(["--ddpm_num_steps", "500", "--ddpm_num_inference_steps", "50"]).ddpm_num_inference_steps == 50
    assert parse_args(["--ddpm_num_steps", "2000"]).ddpm_num_inference_steps == 1000


def test_streaming_has_no_epochs_to_save_by():
    """A stream's length is unknown (explicit --save_*_epochs with --streaming fail at start, above); the diffusers
    recipe's every-10-epochs saves are dropped for a stream (the run still saves at its end)."""
    args = parse_args(["--dataset_name", "someone/faces", "--streaming", "--max_train_steps", "10"])
    assert args.recipe == "diffusers" and (args.save_images_epochs, args.save_model_epochs) == (None, None)
    assert parse_args(["--dataset_name", "someone/faces"]).save_images_epochs == 10  # not streamed: kept


def test_evaluate_spellings_are_aliases_of_the_train_flags():
    """The flags of `evaluate` that mean the same as a train flag are accepted by `train` too (train keeps
    train_unconditional.py's names)."""
    args = parse_args(["--num_inference_steps", "7", "--bpd_timesteps", "9", "--max_eval_images", "11"])
    assert (args.ddpm_num_inference_steps, args.eval_bpd_timesteps, args.eval_max_images) == (7, 9, 11)
    assert "ddpm_num_inference_steps" in args.recipe_overrides


def test_config_is_checked_without_the_cli():
    """TrainConfig raises ConfigError naming the setting (the CLI spells it as a flag); it is frozen."""
    import dataclasses

    from ddpm_hf.errors import ConfigError, DDPMHFError
    from ddpm_hf.training import TrainConfig

    with pytest.raises(ConfigError, match=r"^ema_max_decay must be in \[0, 1\]") as error:
        TrainConfig.create(ema_max_decay=2.0)
    assert isinstance(error.value, DDPMHFError) and error.value.message(lambda f: "--" + f).startswith("--ema_max")
    config = TrainConfig.create(max_train_steps=3)
    assert config.max_train_steps == 3 and config.recipe == "digits"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0
    with pytest.raises(ConfigError, match="adam_beta1"):
        dataclasses.replace(config, adam_beta1=1.5)

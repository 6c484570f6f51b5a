"""``TrainConfig``: every setting of a training run, typed, resolved against ``--recipe`` and checked once, at start.

The fields keep the names and meaning of diffusers' ``train_unconditional.py`` flags. ``TrainConfig.create(**values)``
fills what was left unset (None) from the recipe (ddpm_hf.recipes) and checks every value; a value out of its range,
or two that contradict each other, raise one ``ConfigError`` naming the fields (the CLI spells them as flags). The
config is frozen: the loop derives what it needs (e.g. the step budget of ``num_epochs``) with
``dataclasses.replace``.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field

from ..errors import CheckpointNotFound, ConfigError
from ..recipes import RECIPES, apply_recipe

CHOICES = {  # the settings that take one of a few values (the CLI's argparse choices come from here)
    "recipe": tuple(sorted(RECIPES)),
    "channels": (None, 1, 3),
    "variance_type": ("fixed_small", "fixed_large", "learned_range"),
    "lr_scheduler": ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "dynamo_backend": (None, "no", "eager", "aot_eager", "inductor"),
    "logger": ("tensorboard", "wandb", "none"),
    "eval_metrics": ("bpd", "digits", "fid"),
}
# integer settings and their smallest value (None where the setting may be left unset)
AT_LEAST = {
    "train_batch_size": 1, "eval_batch_size": 1, "gradient_accumulation_steps": 1, "ddpm_num_steps": 1,
    "ddpm_num_inference_steps": 1, "checkpointing_steps": 1, "checkpoints_total_limit": 1, "num_sample_images": 1,
    "eval_max_images": 1, "shuffle_buffer_size": 1, "ddp_timeout": 1, "resolution": 1, "eval_num_samples": 1,
    "eval_inference_steps": 1, "lr_warmup_steps": 0, "seed": 0, "dataloader_num_workers": 0,
}
OPTIONAL_AT_LEAST_ONE = ("num_epochs", "max_train_steps", "save_images_epochs", "save_model_epochs", "eval_steps",
                         "eval_bpd_timesteps")
# real-valued settings: (low, low included, high, high included, why); None where the setting may be unset
INTERVALS = {
    "learning_rate": (0, False, math.inf, False, ""),
    "adam_beta1": (0, True, 1, False, " (Adam's beta_1, Kingma & Ba 2015)"),
    "adam_beta2": (0, True, 1, False, " (Adam's beta_2)"),
    "adam_epsilon": (0, False, math.inf, False, " (added to Adam's denominator)"),
    "adam_weight_decay": (0, True, math.inf, False, ""),
    "max_grad_norm": (0, True, math.inf, False, " (0 disables clipping)"),
    "dropout": (0, True, 1, False, ""),
    "vlb_weight": (0, True, math.inf, False, " (lambda of L_hybrid, Nichol & Dhariwal eq. 16)"),
    "snr_gamma": (0, False, math.inf, False, " (min-SNR-gamma, Hang et al. ICCV 2023)"),
    "cosine_logsnr_shift": (-50, True, 50, True, " (log-SNR shift of the cosine schedule, Hoogeboom et al. 2023)"),
    "ema_max_decay": (0, True, 1, True, " (the EMA's decay cap: 0.9999 in Ho et al.)"),
    "ema_inv_gamma": (0, False, math.inf, False, " (EMA warm-up: decay = 1 - (1 + step / inv_gamma)^-power)"),
    "ema_power": (0, False, math.inf, False, " (EMA warm-up: decay = 1 - (1 + step / inv_gamma)^-power)"),
    "cond_drop_prob": (0, True, 1, False, " (p_uncond of Ho & Salimans 2022, Algorithm 1: the share of labels "
                       "replaced by the null class)"),
    "guidance_scale": (0, True, math.inf, False, " (the pipeline's default classifier-free guidance scale, "
                       "diffusers' convention)"),
}


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one training run; see ``ddpm-hf train --help`` for each (the same names as flags)."""

    recipe: str | None = None
    # data
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    cache_dir: str | None = None
    split: str = "train"
    eval_split: str = "test"
    image_column: str | None = None
    strict: bool = False
    streaming: bool = False
    shuffle_buffer_size: int = 1000
    resolution: int | None = None
    center_crop: bool = False
    random_flip: bool | None = None
    channels: int | None = None
    dataloader_num_workers: int = 0
    # class-conditional training (Ho & Salimans 2022): the label column, the null-class dropout
    class_conditional: bool = False
    label_column: str | None = None
    cond_drop_prob: float = 0.1
    guidance_scale: float | None = None  # saved with a conditional pipeline as its default (model_index.json)
    # model and diffusion
    unet_preset: str | None = None
    model_config_name_or_path: str | None = None
    dropout: float | None = None
    ddpm_num_steps: int | None = None
    ddpm_num_inference_steps: int | None = None
    ddpm_beta_schedule: str | None = None
    prediction_type: str | None = None
    variance_type: str | None = None
    vlb_weight: float = 0.001
    snr_gamma: float | None = None
    cosine_logsnr_shift: float | None = None
    # optimisation
    train_batch_size: int | None = None
    eval_batch_size: int | None = None
    num_epochs: int | None = None
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    lr_scheduler: str | None = None
    lr_warmup_steps: int | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    adam_weight_decay: float | None = None
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = None
    use_ema: bool | None = None
    ema_inv_gamma: float = 1.0
    ema_power: float = 3 / 4
    ema_max_decay: float | None = None
    mixed_precision: str = "no"
    dynamo_backend: str | None = None
    ddp_timeout: int = 7200
    seed: int = 0
    # outputs
    output_dir: str = "outputs/train"
    overwrite_output_dir: bool = False
    save_images_epochs: int | None = None
    save_model_epochs: int | None = None
    num_sample_images: int | None = None
    eval_steps: int | None = None
    eval_metrics: tuple = ("bpd",)
    eval_bpd_timesteps: int | None = None
    eval_num_samples: int = 100
    eval_inference_steps: int = 100
    inception_weights: str | None = None
    eval_max_images: int = 180
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None
    logger: str = "tensorboard"
    logging_dir: str = "logs"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool = False
    hub_revision: str | None = None
    hub_token: str | None = field(default=None, repr=False)
    # written by create(): the recipe values explicit settings replaced, and the settings the recipe filled
    recipe_overrides: tuple = ()
    recipe_filled: tuple = ()
    # written by train() for a class-conditional run: the class names in id order (the null class id is their count)
    class_names: tuple = ()

    @classmethod
    def create(cls, **values):
        """The config of ``values`` (settings left out or None take the defaults above, then the recipe's), checked.
        ``eval_metrics`` may be a comma-separated string. Raises ConfigError."""
        from types import SimpleNamespace

        from ..data import embedded_name

        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        values = {**defaults, **{k: v for k, v in values.items() if v is not None}}
        values = apply_recipe(values, embedded_name(SimpleNamespace(**values)))
        if "ddpm_num_inference_steps" in values["recipe_filled"]:  # the recipe's T sampling steps, with T given
            values["ddpm_num_inference_steps"] = min(values["ddpm_num_inference_steps"], values["ddpm_num_steps"])
        if isinstance(values["eval_metrics"], str):
            values["eval_metrics"] = [m.strip() for m in values["eval_metrics"].split(",") if m.strip()]
        values["eval_metrics"] = tuple(values["eval_metrics"])
        for name in ("save_images_epochs", "save_model_epochs"):  # a stream has no epochs to count
            if values["streaming"] and values[name] is not None:
                if name not in values["recipe_filled"]:
                    raise ConfigError(f"{{{name}}} counts epochs, which a {{streaming}} run cannot; use "
                                      "{checkpointing_steps} (the end of the run saves the pipeline and a sample grid)")
                values[name] = None  # the recipe's value does not apply to a stream
        if values["cosine_logsnr_shift"] is not None and (
                values["cosine_logsnr_shift"] == 0  # the cosine schedule itself: diffusers' squaredcos_cap_v2 betas
                or ("cosine_logsnr_shift" in values["recipe_filled"]  # a recipe's shift of a schedule replaced
                    and values["ddpm_beta_schedule"] != "squaredcos_cap_v2")):
            values["cosine_logsnr_shift"] = None
        values["recipe_overrides"], values["recipe_filled"], values["class_names"] = (
            tuple(values["recipe_overrides"]), tuple(values["recipe_filled"]), tuple(values["class_names"]))
        return cls(**values)

    def __post_init__(self):
        self.check()

    def check(self):
        """Raise ConfigError on the first setting out of its range or contradicting another."""
        for name, choices in CHOICES.items():
            values = getattr(self, name)
            for value in (values if name == "eval_metrics" else (values,)):
                if value not in choices:
                    raise ConfigError(f"{{{name}}} {value}: choose from {', '.join(str(c) for c in choices if c)}")
        for name in RECIPE_KEYS:
            if getattr(self, name) is None and name not in ("dropout", "max_train_steps", "num_epochs",
                                                            "save_images_epochs", "save_model_epochs",
                                                            "guidance_scale", "cosine_logsnr_shift"):
                # (None: the pipelines' default guidance; no shift)
                raise ConfigError(f"{{{name}}} is unset: build the config with TrainConfig.create(...)")
        for name, low in AT_LEAST.items():
            _check_int(name, getattr(self, name), low)
        for name in OPTIONAL_AT_LEAST_ONE:
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.max_train_steps is None and self.num_epochs is None:
            raise ConfigError("give {max_train_steps} or {num_epochs}")
        for name, (low, low_in, high, high_in, why) in INTERVALS.items():
            value = getattr(self, name)
            if value is not None:
                _check_real(name, value, low, low_in, high, high_in, why)
        self._check_combinations()
        self._check_files()

    def _check_combinations(self):
        from ..scheduler_names import BETA_SCHEDULES, PREDICTION_TYPES
        from ..unet_configs import UNET_PRESETS

        for name, choices in (("unet_preset", UNET_PRESETS), ("ddpm_beta_schedule", BETA_SCHEDULES),
                              ("prediction_type", PREDICTION_TYPES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{{{name}}} {getattr(self, name)}: choose from {', '.join(sorted(choices))}")
        if self.ddpm_num_inference_steps > self.ddpm_num_steps:
            raise ConfigError("{ddpm_num_inference_steps} cannot exceed {ddpm_num_steps}")
        if self.eval_bpd_timesteps is not None and self.eval_bpd_timesteps > self.ddpm_num_steps:
            raise ConfigError("{eval_bpd_timesteps} cannot exceed {ddpm_num_steps} (the bound has T terms)")
        if self.dataset_name not in (None, "digits") and self.train_data_dir is not None:
            raise ConfigError("give either {dataset_name} or {train_data_dir}, not both")
        if "digits" in self.eval_metrics and not (self.dataset_name in (None, "digits") and
                                                  self.train_data_dir is None):
            raise ConfigError("{eval_metrics} digits applies to the embedded digits only")
        if self.eval_inference_steps > self.ddpm_num_steps and {"digits", "fid"} & set(self.eval_metrics):
            raise ConfigError("{eval_inference_steps} (the periodic samples' steps) cannot exceed {ddpm_num_steps}")
        if not self.model_config_name_or_path:
            from ..unet_configs import check_resolution

            check_resolution(self.unet_preset, self.resolution)
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise ConfigError("{overwrite_output_dir} would delete the checkpoints that {resume_from_checkpoint} "
                              "needs")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("{push_to_hub} needs {hub_model_id}")
        if not self.class_conditional:
            for name, default in (("label_column", None), ("cond_drop_prob", 0.1), ("class_names", ()),
                                  ("guidance_scale", None)):
                if getattr(self, name) != default and name not in self.recipe_filled:  # (a recipe's is ignored)
                    raise ConfigError(f"{{{name}}} only applies with {{class_conditional}}")
        if self.cosine_logsnr_shift is not None and self.ddpm_beta_schedule != "squaredcos_cap_v2":
            raise ConfigError("{cosine_logsnr_shift} shifts the cosine schedule: it needs {ddpm_beta_schedule} "
                              f"squaredcos_cap_v2, got {self.ddpm_beta_schedule}")
        if self.cosine_logsnr_shift is not None:
            from ..noise_schedules import shifted_cosine_betas

            betas = shifted_cosine_betas(self.ddpm_num_steps, self.cosine_logsnr_shift)
            if not bool((betas > 0).all()):  # alphabar rounds to 1 over the first steps: beta_1 = 0, no noise added
                raise ConfigError("{cosine_logsnr_shift} {shift} leaves beta_1 = 0 at {ddpm_num_steps} {steps} (the "
                                  "shifted alphabar rounds to 1 over the first steps, so they add no noise): use a "
                                  "smaller shift (Hoogeboom et al.'s 2 log(64 / resolution) is 4.2 at 8 pixels)",
                                  shift=self.cosine_logsnr_shift, steps=self.ddpm_num_steps)
        if self.variance_type != "learned_range" and self.vlb_weight != 0.001:
            raise ConfigError("{vlb_weight} only applies with {variance_type} learned_range")
        if self.streaming and self.max_train_steps is None:
            raise ConfigError("{streaming} needs {max_train_steps}: the stream's length is unknown, so epochs "
                              f"({{num_epochs}}, or the {self.recipe} recipe's budget) cannot be counted")

    def _check_files(self):
        """What must exist before anything is loaded: files named by the settings, the checkpoint to resume from, a
        Hub login for the upload at the end."""
        from ..run_dir import resolve_checkpoint

        if self.inception_weights and not os.path.isfile(self.inception_weights):
            raise ConfigError(f"{{inception_weights}} {self.inception_weights}: no such file")
        if self.model_config_name_or_path and not os.path.exists(self.model_config_name_or_path):
            raise ConfigError(f"{{model_config_name_or_path}} {self.model_config_name_or_path}: no such file or "
                              "folder (a UNet2DModel config.json, or a folder holding one)")
        if self.resume_from_checkpoint:  # a name or path that does not exist fails now, before anything is loaded
            try:
                resolve_checkpoint(self.resume_from_checkpoint, self.output_dir)
            except CheckpointNotFound as error:
                raise ConfigError(error.template, **error.values) from None
        if self.hub_model_id is not None:  # checked now, not after hours of training
            from huggingface_hub import get_token
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.hub_model_id)
            except HFValidationError as error:
                raise ConfigError(f"{{hub_model_id}} {self.hub_model_id!r} is not a Hub repo id: "
                                  f"{str(error).replace('{', '{{').replace('}', '}}')}") from None
            if self.push_to_hub and not (self.hub_token or get_token()):
                raise ConfigError("{push_to_hub} needs a Hub login: `hf auth login`, HF_TOKEN or {hub_token}")

    def record(self):
        """The settings as training_args.json holds them (no token)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if k != "hub_token"}


RECIPE_KEYS = sorted({key for recipe in RECIPES.values() for key in recipe})


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{{{name}}} must be an integer, got {value!r}")
    if value < low:
        raise ConfigError(f"{{{name}}} must be >= {low}, got {value}")


def _check_real(name, value, low, low_in, high, high_in, why):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{{{name}}} must be a number, got {value!r}")
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    if not (math.isfinite(value) and above and below):  # NaN fails every comparison: caught here too
        if high == math.inf:
            rule = f"{'>=' if low_in else '>'} {low:g}"
        else:
            rule = f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        raise ConfigError(f"{{{name}}} must be {rule}{why}, got {value!r}")


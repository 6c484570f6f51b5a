"""The flags of ``ddpm-hf train`` (named and meant as in diffusers' train_unconditional.py), resolved against
``--recipe`` (ddpm_hf.recipes) and checked at start with one clear message each."""

import argparse
import os

from .batches import is_digits
from .recipes import RECIPES, apply_recipe
from .scheduling_ddpm_hf import BETA_SCHEDULES, PREDICTION_TYPES
from .unet_configs import UNET_PRESETS

FROM_RECIPE = "(default: from --recipe)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="ddpm-hf train",
        description="Train an unconditional DDPM (flags as in diffusers' train_unconditional.py). With no flags: the "
        "embedded 8x8 digits with the measured 'digits' recipe, written to outputs/train. Flags marked 'from "
        "--recipe' take the recipe's value unless given.",
    )
    a = p.add_argument
    a("--recipe", default=None, choices=sorted(RECIPES),
      help="a named set of defaults (README's recipe table): digits (default for the embedded digits), diffusers "
      "(train_unconditional.py's defaults; default for any other data), ddpm-cifar10, improved-ddpm-cifar10, "
      "ddpm-celebahq-256; explicit flags override it")
    # data
    a("--dataset_name", default=None,
      help='"digits" (default, embedded), a Hub dataset id, or a local folder (saved dataset or images)')
    a("--dataset_config_name", default=None, help="the dataset's configuration name")
    a("--train_data_dir", default=None, help="a folder of images (imagefolder); excludes --dataset_name")
    a("--cache_dir", default=None, help="datasets/hub cache directory")
    a("--split", default="train", help="split to train on (default train)")
    a("--eval_split", default="test",
      help="held-out split for bits/dim (default test; skipped if absent, and with --streaming)")
    a("--image_column", default=None, help="image column (default: found by feature type)")
    a("--strict", action="store_true", help="stop at the first image file that cannot be read (default: skip it, "
      "naming it in a warning, and count the skipped files)")
    a("--streaming", action="store_true",
      help="train from an IterableDataset, shuffled through a buffer and sharded across processes")
    a("--shuffle_buffer_size", type=int, default=1000, help="images in the --streaming shuffle buffer (default 1000)")
    a("--resolution", type=int, default=None, help=f"image size {FROM_RECIPE}: 8 for digits, 64 for diffusers")
    a("--center_crop", action="store_true",
      help="centre crop after resizing (default: a random crop, drawn once per image when the data is cached)")
    a("--random_flip", action=argparse.BooleanOptionalAction, default=None,
      help=f"flip images left-right at random {FROM_RECIPE}")
    a("--channels", type=int, choices=(1, 3), default=None, help="force 1 or 3 channels (default: the data's)")
    a("--dataloader_num_workers", type=int, default=0,
      help="accepted for compatibility with train_unconditional.py; unused: data is cached in memory as uint8 "
      "tensors, or streamed in-process with --streaming")
    # model and diffusion
    a("--unet_preset", default=None, choices=sorted(UNET_PRESETS), help=f"UNet2DModel preset {FROM_RECIPE}")
    a("--model_config_name_or_path", default=None, help="a UNet2DModel config (folder or json) instead of a preset")
    a("--dropout", type=float, default=None, help=f"UNet dropout {FROM_RECIPE}, else the preset's")
    a("--ddpm_num_steps", type=int, default=None, help=f"T {FROM_RECIPE}")
    a("--ddpm_num_inference_steps", type=int, default=None,
      help=f"sampling steps for images written during and after training {FROM_RECIPE}")
    a("--ddpm_beta_schedule", default=None, choices=BETA_SCHEDULES, help=FROM_RECIPE)
    a("--prediction_type", default=None, choices=PREDICTION_TYPES,
      help=f"{FROM_RECIPE}; 'sample' is trained with the x_0 error weighted by SNR(t), which equals L_simple in "
      "epsilon space (Ho eq. 14), as train_unconditional.py does")
    a("--variance_type", default=None, choices=("fixed_small", "fixed_large", "learned_range"),
      help=f"sigma_t^2 of the reverse process {FROM_RECIPE}; learned_range trains the variances with L_hybrid "
      "(Nichol & Dhariwal sec. 3.1)")
    a("--vlb_weight", type=float, default=0.001, help="weight of L_vlb in L_hybrid (default 0.001)")
    a("--snr_gamma", type=float, default=None, help="min-SNR-gamma loss weighting (e.g. 5.0)")
    # optimisation
    a("--train_batch_size", type=int, default=None, help=f"per-process batch size {FROM_RECIPE}")
    a("--eval_batch_size", type=int, default=None,
      help=f"images per batch when sampling and evaluating bits/dim {FROM_RECIPE}")
    a("--num_epochs", type=int, default=None, help="epochs (default: the recipe's step budget)")
    a("--max_train_steps", type=int, default=None, help="optimizer steps; overrides --num_epochs (default: the "
      "recipe's budget, 1400 steps for digits, 100 epochs for diffusers)")
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--learning_rate", type=float, default=None, help=FROM_RECIPE)
    a("--lr_scheduler", default=None,
      choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"),
      help=FROM_RECIPE)
    a("--lr_warmup_steps", type=int, default=None, help=f"in optimizer steps {FROM_RECIPE}")
    a("--adam_beta1", type=float, default=None, help=FROM_RECIPE)
    a("--adam_beta2", type=float, default=None, help=FROM_RECIPE)
    a("--adam_weight_decay", type=float, default=None, help=FROM_RECIPE)
    a("--adam_epsilon", type=float, default=1e-8)
    a("--max_grad_norm", type=float, default=None, help=f"gradient clipping norm, 0 disables {FROM_RECIPE}")
    a("--use_ema", action=argparse.BooleanOptionalAction, default=None, help=f"EMA of the weights {FROM_RECIPE}")
    a("--ema_inv_gamma", type=float, default=1.0)
    a("--ema_power", type=float, default=3 / 4)
    a("--ema_max_decay", type=float, default=None, help=FROM_RECIPE)
    a("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    a("--dynamo_backend", default=None, choices=("no", "eager", "aot_eager", "inductor"),
      help="torch.compile the UNet for training through accelerate (as `accelerate launch --dynamo_backend`); "
      "a one-off compile of about 2 minutes (less with a warm cache); on 2 CPU cores it sped up the digits UNet's "
      "forward+backward 1.2-1.3x but not a whole 1200-step run (BENCHMARKS.md); default: accelerate's, off")
    a("--ddp_timeout", type=int, default=7200,
      help="process-group timeout in seconds, long enough for rank 0's sampling and evaluation at the end (7200, "
      "as diffusers' script)")
    a("--seed", type=int, default=0)
    # outputs
    a("--output_dir", default="outputs/train", help="where the pipeline is saved, with checkpoints and logs beside it")
    a("--overwrite_output_dir", action="store_true", help="delete --output_dir first (never with a resume)")
    a("--save_images_epochs", type=int, default=None, help=f"write a sample grid every N epochs {FROM_RECIPE}, "
      "always at the end")
    a("--save_model_epochs", type=int, default=None, help=f"save the pipeline every N epochs {FROM_RECIPE}, "
      "always at the end")
    a("--num_sample_images", type=int, default=None, help=f"images in each sample grid {FROM_RECIPE}")
    a("--eval_steps", type=int, default=None, help="compute --eval_metrics every N steps, into tensorboard and "
      "history.jsonl (held-out bits/dim is computed at the end in any case)")
    a("--eval_metrics", default="bpd", help="comma-separated, for --eval_steps: bpd (held-out bits/dim; an estimate "
      "with --eval_bpd_timesteps), digits (the offline digits metric of --eval_num_samples samples; embedded digits "
      "only), fid (against the held-out images; needs --inception_weights or the cached Inception file) "
      "(default bpd)")
    a("--eval_bpd_timesteps", type=int, default=None,
      help="periodic bits/dim as a stratified estimate from this many of the T terms (default: all T)")
    a("--eval_num_samples", type=int, default=100, help="samples for the periodic digits/fid metrics (default 100)")
    a("--eval_inference_steps", type=int, default=100,
      help="sampling steps for the periodic digits/fid metrics (default 100)")
    a("--inception_weights", default=None, help="the TF-Inception TorchScript file for --eval_metrics fid")
    a("--eval_max_images", type=int, default=180, help="held-out images used for bits/dim")
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=2)
    a("--resume_from_checkpoint", default=None,
      help='"latest" (the newest checkpoint in --output_dir; starts fresh if there is none), a checkpoint-N name '
      "inside --output_dir, or a path")
    a("--logger", default="tensorboard", choices=("tensorboard", "none"))
    a("--logging_dir", default="logs", help="relative to --output_dir")
    a("--push_to_hub", action="store_true",
      help="at the end, upload the pipeline with its model card, pictures, metrics.json and training_args.json "
      "(never checkpoints or logs) to --hub_model_id")
    a("--hub_model_id", default=None, help="the Hub repo id (namespace/name), also named in the model card")
    a("--hub_private_repo", action="store_true")
    a("--hub_revision", default=None, help="the branch to push to (created from main if missing; default main)")
    a("--hub_token", default=None, help="a token (prefer `hf auth login` or HF_TOKEN); never written to disk")
    args = p.parse_args(argv)
    apply_recipe(args, is_digits(args))
    validate_args(p, args)
    return args


def validate_args(parser, args):
    """Fail at start, with one clear message, on contradictory or impossible flags."""
    from .checkpointing import resolve_checkpoint
    from .unet_configs import check_resolution

    positive = ("train_batch_size", "eval_batch_size", "gradient_accumulation_steps", "ddpm_num_steps",
                "ddpm_num_inference_steps", "checkpointing_steps", "checkpoints_total_limit", "num_sample_images",
                "eval_max_images", "shuffle_buffer_size", "ddp_timeout", "resolution", "eval_num_samples",
                "eval_inference_steps")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    for name in ("num_epochs", "max_train_steps", "save_images_epochs", "save_model_epochs", "eval_steps",
                 "eval_bpd_timesteps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1")
    args.eval_metrics = [m.strip() for m in args.eval_metrics.split(",") if m.strip()]
    if not set(args.eval_metrics) <= {"bpd", "digits", "fid"}:
        parser.error(f"--eval_metrics {','.join(args.eval_metrics)}: choose from bpd, digits, fid")
    if "digits" in args.eval_metrics and not is_digits(args):
        parser.error("--eval_metrics digits applies to the embedded digits only")
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        parser.error(f"--inception_weights {args.inception_weights}: no such file")
    if args.ddpm_num_inference_steps > args.ddpm_num_steps:
        parser.error("--ddpm_num_inference_steps cannot exceed --ddpm_num_steps")
    if args.dataset_name not in (None, "digits") and args.train_data_dir is not None:
        parser.error("give either --dataset_name or --train_data_dir, not both")
    if not args.model_config_name_or_path:
        try:
            check_resolution(args.unet_preset, args.resolution)
        except ValueError as error:
            parser.error(str(error))
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        parser.error("--overwrite_output_dir would delete the checkpoints that --resume_from_checkpoint needs")
    if args.model_config_name_or_path and not os.path.exists(args.model_config_name_or_path):
        parser.error(f"--model_config_name_or_path {args.model_config_name_or_path}: no such file or folder (a "
                     "UNet2DModel config.json, or a folder holding one)")
    if args.resume_from_checkpoint:  # a name or path that does not exist fails now, before anything is loaded
        try:
            resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        except FileNotFoundError as error:
            parser.error(str(error))
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.hub_model_id is not None:  # checked now, not after hours of training
        from huggingface_hub import get_token
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(args.hub_model_id)
        except HFValidationError as error:
            parser.error(f"--hub_model_id {args.hub_model_id!r} is not a Hub repo id: {error}")
        if args.push_to_hub and not (args.hub_token or get_token()):
            parser.error("--push_to_hub needs a Hub login: `hf auth login`, HF_TOKEN or --hub_token")
    if args.learning_rate <= 0:
        parser.error("--learning_rate must be > 0")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        parser.error("--dropout must be in [0, 1)")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        parser.error("--snr_gamma must be > 0")
    if args.variance_type != "learned_range" and args.vlb_weight != 0.001:
        parser.error("--vlb_weight only applies with --variance_type learned_range")
    for name in ("save_images_epochs", "save_model_epochs"):  # a stream has no epochs to count
        if args.streaming and getattr(args, name) is not None:
            if name not in args.recipe_filled:
                parser.error(f"--{name} counts epochs, which a --streaming run cannot; use --checkpointing_steps "
                             "(the end of the run saves the pipeline and a sample grid)")
            setattr(args, name, None)  # the recipe's value does not apply to a stream
    if args.streaming and args.num_epochs is not None and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps: the stream's length is unknown, so epochs (--num_epochs, "
                     f"or the {args.recipe} recipe's budget) cannot be counted")

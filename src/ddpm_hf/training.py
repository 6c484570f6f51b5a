"""Train a DDPM (Ho et al. 2020, Algorithm 1) on an image dataset with accelerate. Read it top to bottom.

Run it as ``accelerate launch scripts/train.py``, ``torchrun --nproc_per_node 2 scripts/train.py`` or
``ddpm-hf train``; with no flags it trains the embedded digits default. Flags keep the names and meaning of diffusers'
``examples/unconditional_image_generation/train_unconditional.py``.

Reproducibility: every random draw of micro-step k on rank r (the data order of each epoch, timesteps, noise, flips,
dropout, random crops of streamed images) comes from seeds derived from (--seed, r, k) or (--seed, epoch), so a
run resumed from a checkpoint is bit-identical to one that never stopped.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import time

import numpy as np
import torch

from .scheduling_ddpm_hf import BETA_SCHEDULES, PREDICTION_TYPES
from .unet_configs import UNET_PRESETS

# The digits default, chosen by measurement on 2 CPU cores (see BENCHMARKS.md).
DEFAULTS = dict(
    unet_preset="cpu-8",
    train_batch_size=128,
    learning_rate=1e-3,
    lr_scheduler="cosine",
    lr_warmup_steps=100,
    max_train_steps=1400,
    ddpm_num_steps=1000,
    ddpm_num_inference_steps=1000,
    ddpm_beta_schedule="squaredcos_cap_v2",
    variance_type="learned_range",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="ddpm-hf train",
        description="Train an unconditional DDPM (flags as in diffusers' train_unconditional.py). "
        "With no flags: the embedded 8x8 digits, written to outputs/train.",
    )
    a = p.add_argument
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
    a("--streaming", action="store_true", help="train from an IterableDataset, sharded across processes")
    a("--resolution", type=int, default=None, help="image size (default: the dataset's own for digits, else 32)")
    a("--center_crop", action="store_true",
      help="centre crop after resizing (default: a random crop, drawn once per image when the data is cached)")
    a("--random_flip", action="store_true", help="flip images left-right at random")
    a("--channels", type=int, choices=(1, 3), default=None, help="force 1 or 3 channels (default: the data's)")
    a("--dataloader_num_workers", type=int, default=0,
      help="accepted for compatibility with train_unconditional.py; unused: data is cached in memory as uint8 "
      "tensors, or streamed in-process with --streaming")
    # model and diffusion
    a("--unet_preset", default=DEFAULTS["unet_preset"], choices=sorted(UNET_PRESETS), help="UNet2DModel preset")
    a("--model_config_name_or_path", default=None, help="a UNet2DModel config (folder or json) instead of a preset")
    a("--ddpm_num_steps", type=int, default=DEFAULTS["ddpm_num_steps"], help="T (default 1000)")
    a("--ddpm_num_inference_steps", type=int, default=DEFAULTS["ddpm_num_inference_steps"],
      help="sampling steps for images written during and after training")
    a("--ddpm_beta_schedule", default=DEFAULTS["ddpm_beta_schedule"],
      choices=BETA_SCHEDULES)
    a("--prediction_type", default="epsilon", choices=PREDICTION_TYPES)
    a("--variance_type", default=DEFAULTS["variance_type"], choices=("fixed_small", "fixed_large", "learned_range"),
      help="sigma_t^2 of the reverse process; learned_range (default) trains the variances with L_hybrid "
      "(Nichol & Dhariwal sec. 3.1)")
    a("--vlb_weight", type=float, default=0.001, help="weight of L_vlb in L_hybrid (default 0.001)")
    a("--snr_gamma", type=float, default=None, help="min-SNR-gamma loss weighting (e.g. 5.0)")
    # optimisation
    a("--train_batch_size", type=int, default=DEFAULTS["train_batch_size"], help="per-process batch size")
    a("--eval_batch_size", type=int, default=256, help="images per batch when sampling and evaluating bits/dim")
    a("--num_epochs", type=int, default=None, help="epochs (default: from --max_train_steps)")
    a("--max_train_steps", type=int, default=None,
      help=f"optimizer steps (default {DEFAULTS['max_train_steps']} when --num_epochs is not given)")
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--learning_rate", type=float, default=DEFAULTS["learning_rate"])
    a("--lr_scheduler", default=DEFAULTS["lr_scheduler"],
      choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"))
    a("--lr_warmup_steps", type=int, default=DEFAULTS["lr_warmup_steps"])
    a("--adam_beta1", type=float, default=0.95)
    a("--adam_beta2", type=float, default=0.999)
    a("--adam_weight_decay", type=float, default=1e-6)
    a("--adam_epsilon", type=float, default=1e-8)
    a("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (0 disables)")
    a("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA of the weights (default on)")
    a("--ema_inv_gamma", type=float, default=1.0)
    a("--ema_power", type=float, default=3 / 4)
    a("--ema_max_decay", type=float, default=0.9999)
    a("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    a("--dynamo_backend", default=None, choices=("no", "eager", "aot_eager", "inductor"),
      help="torch.compile the UNet for training through accelerate (as `accelerate launch --dynamo_backend`); "
      "a one-off compile of about 2 minutes (less with a warm cache); on 2 CPU cores it sped up the digits UNet's "
      "forward+backward 1.2-1.3x but not a whole 1200-step run (BENCHMARKS.md); default: accelerate's, off")
    a("--seed", type=int, default=0)
    # outputs
    a("--output_dir", default="outputs/train")
    a("--overwrite_output_dir", action="store_true", help="delete --output_dir first (never with a resume)")
    a("--save_images_epochs", type=int, default=None, help="write a sample grid every N epochs (default: at end)")
    a("--save_model_epochs", type=int, default=None, help="save the pipeline every N epochs (default: at end)")
    a("--num_sample_images", type=int, default=36, help="images in each sample grid")
    a("--eval_steps", type=int, default=None, help="bits/dim on the held-out split every N steps (and at the end)")
    a("--eval_max_images", type=int, default=180, help="held-out images used for bits/dim")
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=2)
    a("--resume_from_checkpoint", default=None, help='a checkpoint folder, or "latest"')
    a("--logger", default="tensorboard", choices=("tensorboard", "none"))
    a("--logging_dir", default="logs", help="relative to --output_dir")
    a("--push_to_hub", action="store_true",
      help="at the end, upload the pipeline with its model card (pipeline/README.md) and pictures to --hub_model_id")
    a("--hub_model_id", default=None, help="the Hub repo id (namespace/name), also named in the model card")
    a("--hub_private_repo", action="store_true")
    a("--hub_token", default=None, help="a token (prefer `hf auth login` or HF_TOKEN); never written to disk")
    args = p.parse_args(argv)
    validate_args(p, args)
    return args


def validate_args(parser, args):
    """Fail at start, with one clear message, on contradictory or impossible flags."""
    positive = ("train_batch_size", "eval_batch_size", "gradient_accumulation_steps", "ddpm_num_steps",
                "ddpm_num_inference_steps", "checkpointing_steps", "checkpoints_total_limit", "num_sample_images",
                "eval_max_images")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    for name in ("num_epochs", "max_train_steps", "save_images_epochs", "save_model_epochs", "eval_steps",
                 "resolution"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1")
    if args.ddpm_num_inference_steps > args.ddpm_num_steps:
        parser.error("--ddpm_num_inference_steps cannot exceed --ddpm_num_steps")
    if args.dataset_name not in (None, "digits") and args.train_data_dir is not None:
        parser.error("give either --dataset_name or --train_data_dir, not both")
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        parser.error("--overwrite_output_dir would delete the checkpoints that --resume_from_checkpoint needs")
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
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        parser.error("--snr_gamma must be > 0")
    if args.variance_type != "learned_range" and args.vlb_weight != 0.001:
        parser.error("--vlb_weight only applies with --variance_type learned_range")
    if args.streaming and args.num_epochs is not None:
        parser.error("--streaming trains by --max_train_steps, not --num_epochs")
    if args.num_epochs is None and args.max_train_steps is None:
        args.max_train_steps = DEFAULTS["max_train_steps"]


# ----------------------------------------------------------------------------------------------- building blocks


def _step_seed(seed, *parts):
    """A 63-bit seed derived from ``seed`` and integers (rank, step, ...)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def unet_for_data(args, channels, resolution):
    """The UNet2DModel of --unet_preset (or --model_config_name_or_path) sized to the data's channels and resolution,
    with doubled output channels for learned variances."""
    from diffusers import UNet2DModel

    from .unet_configs import unet_config

    learned = args.variance_type == "learned_range"
    if args.model_config_name_or_path:
        config = UNet2DModel.load_config(args.model_config_name_or_path)
        config.update(in_channels=channels, out_channels=channels * (2 if learned else 1), sample_size=resolution)
        return UNet2DModel.from_config(config)
    config = unet_config(args.unet_preset, channels=channels, learned_variance=learned, sample_size=resolution)
    return UNet2DModel(**config)


def flatten_parameters(module):
    """Make every trainable parameter of ``module`` a view into one contiguous buffer and its gradient a view into a
    second one; returns that buffer as one ``nn.Parameter`` whose ``.grad`` is the flat gradient.

    The optimizer, gradient clipping and the EMA then each run one op over one tensor instead of a loop over the
    module's tensors (268 for cpu-8). Backward accumulates into the existing gradient views in place, so gradients
    must be cleared with ``flat.grad.zero_()``, never set to None. Call it after moving the module to its device."""
    params = [p for p in module.parameters() if p.requires_grad]
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset : offset + n].view_as(p)
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    return flat


class EpochBatches:
    """Batches of a cached uint8 image tensor, in a fresh permutation each epoch seeded by (seed, epoch), sharded
    across processes, last partial batch dropped. ``batch(k)`` is micro-batch k of the whole run, so resuming at
    any step needs no iterator state."""

    def __init__(self, images, batch_size, seed, rank=0, world=1):
        self.images, self.batch_size, self.seed, self.rank, self.world = images, batch_size, seed, rank, world
        self.per_epoch = len(images) // (batch_size * world)
        if self.per_epoch < 1:
            raise ValueError(f"{len(images)} images are fewer than one batch of {batch_size} x {world} processes")
        self._epoch, self._order = None, None

    def batch(self, k):
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_step_seed(self.seed, epoch))
            self._order = torch.randperm(len(self.images), generator=g)[self.rank :: self.world]
            self._epoch = epoch
        return self.images[self._order[i * self.batch_size : (i + 1) * self.batch_size]]


class StreamBatches:
    """Batches from an IterableDataset (``--streaming``): each process reads its own shard, re-iterating it each
    epoch; ``batch(k)`` must be called with k = 0, 1, 2, ... (on resume the first k batches are skipped)."""

    def __init__(self, dataset, image_column, resolution, channels, center_crop, batch_size, seed, rank, world):
        from datasets.distributed import split_dataset_by_node

        self.dataset = split_dataset_by_node(dataset, rank=rank, world_size=world) if world > 1 else dataset
        self.column, self.resolution, self.channels = image_column, resolution, channels
        self.center_crop, self.batch_size, self.seed = center_crop, batch_size, seed
        self.per_epoch, self._next, self._iter, self._epoch = None, 0, None, 0
        self.rank = rank
        self.transform_seconds = 0.0  # transforms happen per batch, inside the training loop

    def _rows(self):
        while True:
            self.dataset.set_epoch(self._epoch)
            for row in self.dataset:
                yield row[self.column]
            self._epoch += 1

    def batch(self, k):
        if self._iter is None:
            self._iter = self._rows()
        while self._next <= k:
            images = [next(self._iter) for _ in range(self.batch_size)]
            self._next += 1
        from .data import image_to_uint8

        rng = np.random.default_rng([self.seed, self.rank, k])  # batch k's crops: the same after a resume
        return torch.stack([image_to_uint8(im, self.resolution, self.channels, self.center_crop, rng)
                            for im in images])


def prepare_data(args, accelerator):
    """The training batches, the held-out images (uint8) for bits/dim, channels and resolution."""
    from .data import cache_images, find_image_column, fits_in_memory, infer_channels, load_image_dataset

    train = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_data_dir, args.cache_dir,
                               args.split, args.streaming)
    column = find_image_column(train, args.image_column)
    channels = args.channels or infer_channels(train, column)
    resolution = args.resolution or (8 if args.dataset_name in (None, "digits") and not args.train_data_dir else 32)
    rank, world = accelerator.process_index, accelerator.num_processes
    if args.streaming:
        batches = StreamBatches(train, column, resolution, channels, args.center_crop, args.train_batch_size,
                                args.seed, rank, world)
    else:
        if not fits_in_memory(train, resolution, channels):
            raise ValueError("the dataset does not fit in memory as uint8 tensors; use --streaming")
        cache_start = time.time()
        images = cache_images(train, column, resolution, channels, args.center_crop,
                              progress=accelerator.is_local_main_process)
        batches = EpochBatches(images, args.train_batch_size, args.seed, rank, world)
        batches.transform_seconds = time.time() - cache_start  # decoding and transforms, done once
    held_out = None
    if args.eval_split and not args.streaming:
        try:
            test = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_data_dir,
                                      args.cache_dir, args.eval_split)
        except (ValueError, KeyError):
            test = None
        if test is not None:
            test = test.select(range(min(len(test), args.eval_max_images)))
            held_out = cache_images(test, column, resolution, channels, center_crop=True, progress=False)
    return batches, held_out, channels, resolution


def held_out_bits(unet, scheduler, images, batch_size, seed, progress=False):
    """Per-image bits/dim of uint8 images under the full T-step bound (Ho eq. 5), as a (N, 3) float64 tensor of
    [total, prior term, decoder term]."""
    from .data import to_model_range
    from .likelihood import bits_per_dim

    rows = []
    g = torch.Generator().manual_seed(seed)
    device = next(unet.parameters()).device
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start : start + batch_size]).to(device)
        r = bits_per_dim(unet, scheduler, x, generator=g, progress=progress)
        rows.append(torch.stack([r.total, r.prior, r.decoder], 1).double().cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)


def summarize_bits(terms):
    """Mean bits/dim, its standard error and the mean prior and decoder terms of ``held_out_bits`` rows."""
    total = terms[:, 0]
    return {
        "bits_per_dim": total.mean().item(),
        "bits_per_dim_stderr": (total.std() / math.sqrt(len(total))).item() if len(total) > 1 else 0.0,
        "prior_bits_per_dim": terms[:, 1].mean().item(),
        "decoder_bits_per_dim": terms[:, 2].mean().item(),
        "num_images": len(total),
    }


def evaluate_bits_per_dim(unet, scheduler, held_out, batch_size, seed, progress):
    """Mean bits/dim of the held-out images under the full T-step bound (Ho eq. 5), with its terms (one process)."""
    return summarize_bits(held_out_bits(unet, scheduler, held_out, batch_size, seed, progress))


def evaluate_on_all_ranks(accelerator, unet, scheduler, held_out, batch_size, seed):
    """``evaluate_bits_per_dim`` split across processes: rank r scores every world-th image from r (with its own
    noise seed) and the rows are gathered, so no rank idles, or times out in a collective, while one evaluates."""
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    terms = held_out_bits(unet, scheduler, held_out[rank::world], batch_size, seed + rank,
                          progress=accelerator.is_local_main_process)
    return summarize_bits(torch.cat(gather_object([terms])))


def save_loss_plot(history, path, title):
    """loss.png: the training loss per step (and its running mean) against the step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    loss = np.array([h["loss"] for h in history])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
    window = max(1, len(loss) // 50)
    if len(loss) >= window:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"running mean ({window} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _read_history(path, last_step):
    """The records of history.jsonl up to ``last_step``."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r["step"] <= last_step]


def _checkpoint_dirs(output_dir):
    names = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d[11:].isdigit()]
    return sorted(names, key=lambda d: int(d[11:]))


def save_checkpoint(accelerator, output_dir, step, state, total_limit):
    """accelerator.save_state (model, EMA, optimizer, LR scheduler, RNG) plus our counters, written to a temporary
    folder and renamed when complete; keeps the newest ``total_limit`` checkpoints."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    # torch.save, not safetensors: the parameters are views into one buffer (flatten_parameters), which
    # safetensors.load_model refuses; torch.save stores that buffer once
    accelerator.save_state(tmp, safe_serialization=False)
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "training_state.json"), "w") as f:
            json.dump(state, f)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(output_dir)[:-total_limit]:
            shutil.rmtree(os.path.join(output_dir, old))
    accelerator.wait_for_everyone()


def _resolve_resume(args):
    if args.resume_from_checkpoint != "latest":
        path = args.resume_from_checkpoint
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--resume_from_checkpoint {path} does not exist")
        return path
    dirs = _checkpoint_dirs(args.output_dir) if os.path.isdir(args.output_dir) else []
    return os.path.join(args.output_dir, dirs[-1]) if dirs else None


# ----------------------------------------------------------------------------------------------------- training


def train(args):
    """Train, then save the pipeline (EMA weights if --use_ema), sample grid, denoising strip, loss plot,
    training_args.json and metrics.json in --output_dir. Returns the metrics dict."""
    import diffusers
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from . import __version__
    from .cli import generate, write_samples
    from .data import dataset_source, to_model_range
    from .losses import diffusion_loss
    from .model_card import write_model_card
    from .pipeline_ddpm_hf import DDPMHFPipeline
    from .scheduling_ddpm_hf import DDPMHFScheduler

    # several processes and no GPU (torchrun on a CPU machine): accelerate needs cpu=True to pick MULTI_CPU (gloo)
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_cpu,
        mixed_precision=args.mixed_precision,
        dynamo_backend=args.dynamo_backend,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if main:
        if args.overwrite_output_dir and os.path.isdir(args.output_dir):
            shutil.rmtree(args.output_dir)
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    torch.manual_seed(args.seed)  # the same initial weights on every process

    # data, model, noise schedule
    with accelerator.main_process_first():  # one download into the cache, then the other ranks read it
        batches, held_out, channels, resolution = prepare_data(args, accelerator)
    unet = unet_for_data(args, channels, resolution).to(accelerator.device)
    model = unet  # the bare UNet; `unet` becomes the DDP wrapper and/or the compiled module after prepare()
    flat = flatten_parameters(model)  # one tensor for the optimizer, clipping and EMA
    noise_scheduler = DDPMHFScheduler(num_train_timesteps=args.ddpm_num_steps, beta_schedule=args.ddpm_beta_schedule,
                                      prediction_type=args.prediction_type, variance_type=args.variance_type)
    T = args.ddpm_num_steps

    # steps
    accum = args.gradient_accumulation_steps
    if args.max_train_steps is None:
        args.max_train_steps = args.num_epochs * math.ceil(batches.per_epoch / accum)
    # with --streaming the epoch length is unknown: the whole run counts as one epoch for --save_*_epochs
    steps_per_epoch = math.ceil((batches.per_epoch or args.max_train_steps * accum) / accum)
    if main:
        with open(os.path.join(args.output_dir, "training_args.json"), "w") as f:
            json.dump({k: v for k, v in vars(args).items() if k != "hub_token"}, f, indent=2)

    # fused AdamW over the one flat buffer: a single kernel instead of a Python loop over every tensor
    optimizer = torch.optim.AdamW([flat], lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    # accelerate steps a prepared LR scheduler once per process each step, hence the factor (as in diffusers' script)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * world,
                                 num_training_steps=args.max_train_steps * world)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    ema = None
    if args.use_ema:
        ema = EMAModel([flat], decay=args.ema_max_decay, use_ema_warmup=True,
                       inv_gamma=args.ema_inv_gamma, power=args.ema_power, foreach=True)
        accelerator.register_for_checkpointing(ema)
    if args.logger != "none":
        accelerator.init_trackers("ddpm-hf", config={k: v for k, v in vars(args).items()
                                                     if isinstance(v, (int, float, str, bool)) and k != "hub_token"})

    # resume
    step, images_seen, elapsed_before = 0, 0, 0.0
    resume = _resolve_resume(args) if args.resume_from_checkpoint else None
    if resume:
        accelerator.load_state(resume)
        if ema is not None:
            ema.to(accelerator.device)  # load_state leaves the EMA copy on the CPU
        with open(os.path.join(resume, "training_state.json")) as f:
            state = json.load(f)
        step, images_seen, elapsed_before = state["step"], state["images_seen"], state["elapsed"]
        accelerator.print(f"resumed from {resume} at step {step}")
    # per-step records, appended to history.jsonl as they come (a resume drops the records after its checkpoint)
    history_path = os.path.join(args.output_dir, "history.jsonl")
    history = _read_history(history_path, step) if resume else []
    if main:
        with open(history_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
    first_batch_checksum = None

    # the loop: Ho Algorithm 1 with gradient accumulation, clipping, EMA
    progress = tqdm(total=args.max_train_steps, initial=step, desc="training", disable=not accelerator.is_local_main_process)
    start_time, window_start, window_images, first_step_seconds = time.time(), time.time(), 0, None
    unet.train()
    while step < args.max_train_steps:
        total_loss = 0.0
        for micro in range(accum):
            k = step * accum + micro  # micro-batch index of the whole run
            g = torch.Generator().manual_seed(_step_seed(args.seed, rank, k))
            torch.manual_seed(_step_seed(args.seed, rank, k, 1))  # dropout
            raw = batches.batch(k)
            if first_batch_checksum is None:
                first_batch_checksum = _checksum([raw.float()])
            x0 = to_model_range(raw, args.random_flip, g).to(accelerator.device)
            noise = torch.randn(x0.shape, generator=g).to(accelerator.device)
            t = torch.randint(0, T, (x0.shape[0],), generator=g).to(accelerator.device)
            noisy = noise_scheduler.add_noise(x0, noise, t)  # Ho eq. 4
            sync = micro == accum - 1
            with accelerator.no_sync(unet) if not sync and world > 1 else contextlib.nullcontext():
                with accelerator.autocast():
                    output = unet(noisy, t).sample
                loss, mse, vlb = diffusion_loss(noise_scheduler, output, x0, noisy, noise, t, args.snr_gamma,
                                                args.vlb_weight)
                accelerator.backward(loss / accum)
            total_loss += loss.detach().item() / accum
            images_seen += x0.shape[0] * world
            window_images += x0.shape[0] * world
        grad_norm = None
        if args.max_grad_norm > 0:  # one norm and one scaling of the flat gradient
            accelerator.unscale_gradients()  # (fp16 only)
            grad_norm = torch.nn.utils.clip_grad_norm_([flat], args.max_grad_norm, foreach=False)
        optimizer.step()
        lr_scheduler.step()
        flat.grad.zero_()  # the gradient views must stay (see flatten_parameters)
        if ema is not None:
            ema.step([flat])
        step += 1
        if first_step_seconds is None:  # includes one-off costs: a torch.compile, first-call allocations
            first_step_seconds = time.time() - start_time

        # bookkeeping
        now = time.time()
        record = {"step": step, "seconds": round(elapsed_before + now - start_time, 3), "loss": total_loss,
                  "lr": lr_scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        quartile = (t * 4 // T).clamp(max=3)  # L_simple of the last micro-batch by timestep quartile
        sums = torch.zeros(4, dtype=mse.dtype, device=mse.device).index_add_(0, quartile, mse)
        counts = torch.bincount(quartile, minlength=4)
        for q, (total, n) in enumerate(zip(sums.tolist(), counts.tolist())):
            if n:
                record[f"loss_t_q{q + 1}"] = total / n
        if vlb is not None:
            record["vlb_bpd"] = vlb.mean().item()  # the one-sample estimate T * L_{t-1} of the bound, bits/dim
        history.append(record)
        if main:
            with open(history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        rate = window_images / max(now - window_start, 1e-9)
        progress.update(1)
        progress.set_postfix(loss=f"{total_loss:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{rate:.0f}")
        if step % 50 == 0:
            window_start, window_images = now, 0
        accelerator.log({k: v for k, v in record.items() if k not in ("step", "seconds")}, step=step)

        epoch_done = step % steps_per_epoch == 0
        epoch = step // steps_per_epoch
        if step % args.checkpointing_steps == 0 and step < args.max_train_steps:
            save_checkpoint(accelerator, args.output_dir, step, {
                "step": step, "images_seen": images_seen,
                "elapsed": elapsed_before + time.time() - start_time}, args.checkpoints_total_limit)
        if main and epoch_done and args.save_images_epochs and epoch % args.save_images_epochs == 0:
            pictures = _save_samples(args, model, flat, ema, noise_scheduler, f"epoch {epoch}",
                                     f"samples-epoch{epoch}")
            _log_pictures(accelerator, args, pictures, step)
        if main and epoch_done and args.save_model_epochs and epoch % args.save_model_epochs == 0:
            _save_pipeline(args, model, flat, ema, noise_scheduler)
        if args.eval_steps and step % args.eval_steps == 0 and step < args.max_train_steps and held_out is not None:
            with _ema_weights(model, flat, ema) as ema_unet:
                result = evaluate_on_all_ranks(accelerator, ema_unet, noise_scheduler, held_out, args.eval_batch_size,
                                               args.seed)
            accelerator.log({"eval/bits_per_dim": result["bits_per_dim"]}, step=step)
            model.train()
    progress.close()
    train_seconds = elapsed_before + time.time() - start_time
    accelerator.wait_for_everyone()

    # outputs
    metrics = {"steps": step, "images_seen": images_seen, "data_seconds": round(batches.transform_seconds, 2),
               "train_seconds": round(train_seconds, 2), "first_step_seconds": round(first_step_seconds or 0.0, 2),
               "images_per_second": round(images_seen / max(train_seconds, 1e-9), 1), "processes": world,
               "device": accelerator.device.type, "parameters": flat.numel(),
               "dataset_source": dataset_source(args.dataset_name, args.train_data_dir),
               "versions": {"ddpm-hf": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}}
    if isinstance(batches, EpochBatches):  # cached data: the number of training images is known
        metrics["train_images"] = len(batches.images)
    if world > 1:  # checks across ranks: the same weights, different data
        checks = torch.tensor([_checksum(model.parameters()),
                               first_batch_checksum], dtype=torch.float64,
                              device=accelerator.device)
        gathered = accelerator.gather(checks[None]).view(world, 2).cpu()
        metrics["weights_identical_across_ranks"] = bool((gathered[:, 0] == gathered[0, 0]).all())
        metrics["first_batches_distinct_across_ranks"] = len(set(gathered[:, 1].tolist())) == world
    if held_out is not None:  # held-out bits/dim of the weights that are saved (EMA if on), on every rank
        eval_start = time.time()
        with _ema_weights(model, flat, ema) as ema_unet:
            metrics.update(evaluate_on_all_ranks(accelerator, ema_unet, noise_scheduler, held_out,
                                                 args.eval_batch_size, args.seed))
        metrics["eval_seconds"] = round(time.time() - eval_start, 1)
        accelerator.log({"eval/bits_per_dim": metrics["bits_per_dim"]}, step=step)
    if main:
        pipeline_dir = _save_pipeline(args, model, flat, ema, noise_scheduler)
        pipe = DDPMHFPipeline.from_pretrained(pipeline_dir).to(accelerator.device)
        pipe.set_progress_bar_config(disable=True)
        sample_start = time.time()
        images, strip = generate(pipe, args.num_sample_images, args.eval_batch_size, args.ddpm_num_inference_steps,
                                 args.seed, strip=True)
        metrics["sampling_seconds"] = round(time.time() - sample_start, 1)
        name = os.path.basename(os.path.normpath(args.dataset_name or args.train_data_dir or "digits"))
        title = (f"{name}: {step} steps, {args.ddpm_num_inference_steps} sampling steps"
                 f"{', EMA' if ema is not None else ''}")
        pictures = write_samples(pipe, images, os.path.join(args.output_dir, "samples"), title, strip)
        _log_pictures(accelerator, args, pictures, step)
        save_loss_plot(history, os.path.join(args.output_dir, "loss.png"), f"{name} training loss")
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        write_model_card(args.output_dir, repo_id=args.hub_model_id)  # pipeline/README.md and pipeline/images/
        if args.push_to_hub:
            try:
                pipe.save_pretrained(pipeline_dir, push_to_hub=True, repo_id=args.hub_model_id,
                                     private=args.hub_private_repo, token=args.hub_token)
            except Exception as error:  # the run is saved: say how to upload it without training again
                raise RuntimeError(
                    f"the upload to {args.hub_model_id} failed ({type(error).__name__}: {error}). The trained "
                    f"pipeline and its model card are saved in {pipeline_dir}; upload them with "
                    f"`ddpm-hf push {args.output_dir} --hub_model_id {args.hub_model_id}`") from error
    # every rank waits for rank 0's outputs, then all leave the process group together: a rank that destroys it early
    # can leave the others hanging in their own destroy_process_group (seen with gloo under torchrun)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def _checksum(tensors):
    """A float64 fingerprint of tensors' exact values (sum of value * position weights)."""
    total = 0.0
    for i, x in enumerate(tensors):
        flat = x.detach().double().flatten()
        total += float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).sin()).sum()) * (i + 1)
    return total


class _ema_weights:
    """Context: the bare UNet in eval mode holding the EMA weights (restored on exit); ``flat`` is the buffer its
    parameters are views of."""

    def __init__(self, model, flat, ema):
        self.model, self.flat, self.ema = model, flat, ema

    def __enter__(self):
        if self.ema is not None:
            self.ema.store([self.flat])
            self.ema.copy_to([self.flat])
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore([self.flat])
        return False


def _save_pipeline(args, model, flat, ema, noise_scheduler):
    from .pipeline_ddpm_hf import DDPMHFPipeline
    from .scheduling_ddpm_hf import DDPMHFScheduler

    path = os.path.join(args.output_dir, "pipeline")
    with _ema_weights(model, flat, ema) as unet:
        scheduler = DDPMHFScheduler.from_config(noise_scheduler.config)
        DDPMHFPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    model.train()
    return path


def _save_samples(args, model, flat, ema, noise_scheduler, label, folder):
    from .cli import generate, write_samples
    from .pipeline_ddpm_hf import DDPMHFPipeline
    from .scheduling_ddpm_hf import DDPMHFScheduler

    with _ema_weights(model, flat, ema) as unet:
        pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler.from_config(noise_scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        images, _ = generate(pipe, args.num_sample_images, args.eval_batch_size, args.ddpm_num_inference_steps,
                             args.seed)
        pictures = write_samples(pipe, images, os.path.join(args.output_dir, folder),
                                 f"{label}, {args.ddpm_num_inference_steps} steps")
    model.train()
    return pictures


def _log_pictures(accelerator, args, pictures, step):
    """The sample grid and denoising strip as tensorboard images (tags samples/grid, samples/strip)."""
    if args.logger != "tensorboard":
        return
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    for name, picture in pictures.items():
        writer.add_image(f"samples/{name}", np.asarray(picture.convert("RGB")), step, dataformats="HWC")


def main(argv=None):
    return train(parse_args(argv))

"""Images/second of a whole training run: ``ddpm_hf.training.train`` against a plain diffusers loop, same run.

The baseline ("plain") is diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` loop as
that script runs it: a ``datasets`` dataset with per-item PIL transforms on every epoch (``set_transform``: decode,
convert, bilinear resize of the shorter side, centre crop, random flip, to tensor, normalise to [-1, 1]) behind a
``DataLoader`` prepared by accelerate, ``torch.optim.AdamW`` with its defaults, diffusers' ``EMAModel`` with its
defaults, ``accelerator.clip_grad_norm_``, the loss read back every step for the log, tensorboard logging, fp32
(torchvision is replaced by the equivalent PIL and numpy calls: it does not import beside this torch). Ours is the
real ``ddpm_hf.training.train`` with ``--variance_type fixed_small`` so that both train the same UNet (the same
preset, channels and output channels) at the same batch; its data time (decoding and caching the images once)
counts as training time.

A third measurement is the bare ceiling: forward + backward of the same UNet on a fixed batch, nothing else.

Each measurement runs in its own process (imports and model construction are not timed), in the order ceiling,
plain, ours fp32, ours bf16 (and plain bf16 with ``--plain_bf16``), repeated ``--rounds`` times so that drift on a
shared machine hits all of them; the table gives medians over rounds and the ratio ours / plain fp32 of each round.
Goals: ours fp32 / plain fp32 >= 1.25 and ours bf16 / plain fp32 >= 1.4.

    python benchmarks/bench_train.py                        # batch 16 (train_unconditional.py's default) and 128
    python benchmarks/bench_train.py --batch_sizes 128 --images 8192 --rounds 3
    python benchmarks/bench_train.py --dataset mnist --unet_preset cpu-28-small --resolution 28 --batch_sizes 64 \
        --images 3200 --rounds 2 --channels_last          # the mnist recipe's UNet and batch
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

GOALS = {"ours fp32": 1.25, "ours bf16": 1.4}


# ------------------------------------------------------------------------------------------- the measured runs


def run_plain(args, mixed_precision):
    """The train_unconditional.py loop (its defaults, fp32 unless told), timed from the first batch to the last
    optimizer step. Returns (images, seconds)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from PIL import Image
    from tqdm.auto import tqdm

    from ddpm_hf.data import load_embedded_dataset
    from ddpm_hf.unet_configs import unet_config

    logging_dir = tempfile.mkdtemp(prefix="plain-logs-")
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with="tensorboard",
                              project_config=ProjectConfiguration(project_dir=logging_dir, logging_dir=logging_dir))
    torch.manual_seed(args.seed)
    model = UNet2DModel(**unet_config(args.unet_preset, channels=1, sample_size=args.resolution))
    ema_model = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                         model_cls=UNet2DModel, model_config=model.config)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    dataset = load_embedded_dataset(args.dataset, "train")
    resolution = args.resolution

    def augment(image, rng=np.random):  # Resize(bilinear), CenterCrop, RandomHorizontalFlip, ToTensor, Normalize
        w, h = image.size
        scale = resolution / min(w, h)
        image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        w, h = image.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32)[None] / 255.0
        return torch.from_numpy((array - 0.5) / 0.5)

    def transform_images(examples):  # the script converts to RGB; grayscale keeps the UNet identical to ours
        return {"input": [augment(image.convert("L")) for image in examples["image"]]}

    dataset.set_transform(transform_images)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=0)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500,
                                 num_training_steps=args.steps)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema_model.to(accelerator.device)
    accelerator.init_trackers("plain")
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
    progress = tqdm(total=args.steps, disable=True)
    global_step, images, start = 0, 0, time.perf_counter()
    while global_step < args.steps:
        model.train()
        for batch in loader:
            clean_images = batch["input"].to(weight_dtype)
            noise = torch.randn(clean_images.shape, dtype=weight_dtype, device=clean_images.device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],),
                                      device=clean_images.device).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            with accelerator.accumulate(model):
                model_output = model(noisy_images, timesteps).sample
                loss = F.mse_loss(model_output.float(), noise.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema_model.step(model.parameters())
                progress.update(1)
                global_step += 1
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "step": global_step,
                    "ema_decay": ema_model.cur_decay_value}
            progress.set_postfix(**logs)
            accelerator.log(logs, step=global_step)
            images += clean_images.shape[0]
            if global_step >= args.steps:
                break
    seconds = time.perf_counter() - start
    accelerator.end_training()
    return images, seconds


def run_ours(args, mixed_precision, compile_=False):
    """ddpm_hf.training.train for --steps steps (no checkpoints, no held-out evaluation, one 1-step sample at the
    end, which is not timed). Returns (images, data + training seconds, steady-state seconds after the first step
    for the images after it)."""
    from ddpm_hf.training import TrainConfig, train

    with tempfile.TemporaryDirectory() as output_dir:
        metrics = train(TrainConfig.create(
            dynamo_backend="inductor" if compile_ else "no", output_dir=output_dir, unet_preset=args.unet_preset,
            dataset_name=args.dataset,
            resolution=args.resolution, train_batch_size=args.batch_size, max_train_steps=args.steps,
            variance_type="fixed_small", random_flip=True, mixed_precision=mixed_precision,
            checkpointing_steps=args.steps + 1, eval_split="", num_sample_images=1, ddpm_num_inference_steps=1,
            seed=args.seed))
    steady = (metrics["images_seen"] - args.batch_size, metrics["train_seconds"] - metrics["first_step_seconds"])
    return metrics["images_seen"], metrics["data_seconds"] + metrics["train_seconds"], steady


def run_ours_compiled(args, mixed_precision):
    """run_ours with ``--dynamo_backend inductor`` (the compile happens in the first step, and is timed)."""
    return run_ours(args, mixed_precision, compile_=True)


def run_ceiling(args, mixed_precision, channels_last=False):
    """Forward + backward of the same UNet on one fixed batch, --steps times (the first 3 untimed); with
    ``channels_last`` the UNet and batch in torch.channels_last memory format."""
    import torch
    from diffusers import UNet2DModel

    from ddpm_hf.unet_configs import unet_config

    torch.manual_seed(args.seed)
    model = UNet2DModel(**unet_config(args.unet_preset, channels=1, sample_size=args.resolution)).train()
    x = torch.randn(args.batch_size, 1, args.resolution, args.resolution)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (args.batch_size,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision == "bf16")

    def step():
        with autocast:
            out = model(x, t).sample
        torch.nn.functional.mse_loss(out.float(), x).backward()
        model.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.steps * args.batch_size, time.perf_counter() - start


def run_ceiling_channels_last(args, mixed_precision):
    return run_ceiling(args, mixed_precision, channels_last=True)


RUNS = {"plain": run_plain, "ours": run_ours, "ours+inductor": run_ours_compiled, "ceiling": run_ceiling,
        "ceiling+channels_last": run_ceiling_channels_last}


# --------------------------------------------------------------------------------------------------- the driver


def measure(args, kind, mixed_precision, steps, batch_size):
    """Run one measurement in a fresh process; returns (images per second of the whole run, images per second after
    the first step or None)."""
    command = [sys.executable, os.path.abspath(__file__), "--_run", kind, "--_precision", mixed_precision,
               "--steps", str(steps), "--batch_sizes", str(batch_size), "--unet_preset", args.unet_preset,
               "--resolution", str(args.resolution), "--seed", str(args.seed), "--dataset", args.dataset]
    env = dict(os.environ, TQDM_DISABLE="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{kind} {mixed_precision} batch {batch_size} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    steady = result.get("steady")
    return result["images"] / result["seconds"], steady[0] / steady[1] if steady else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[16, 128])
    p.add_argument("--images", type=int, default=4096, help="images per measured run (sets the step count)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--unet_preset", default="cpu-8")
    p.add_argument("--resolution", type=int, default=8)
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits", help="the embedded training images")
    p.add_argument("--channels_last", action="store_true",
                   help="also time the ceiling with the UNet and batch in channels_last memory format")
    p.add_argument("--compile", action="store_true",
                   help="also time ours with --dynamo_backend inductor (compile time counted in the whole run)")
    p.add_argument("--plain_bf16", action="store_true", help="also time the plain loop with --mixed_precision bf16")
    p.add_argument("--only", nargs="+", default=None, metavar="RUN",
                   help='time only these rows, e.g. --only "plain fp32" "ours fp32" "ours+inductor fp32" '
                   '(plain fp32 is always included: it is the baseline)')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_run", choices=sorted(RUNS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--_precision", default="no", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._run:  # a child process: one measurement, printed as JSON on the last line
        args.batch_size = args.batch_sizes[0]
        images, seconds, *steady = RUNS[args._run](args, args._precision)
        print(json.dumps({"images": images, "seconds": seconds, "steady": steady[0] if steady else None}))
        return

    import diffusers
    import torch

    kinds = [("ceiling", "no"), ("plain", "no"), ("ours", "no"), ("ceiling", "bf16"), ("ours", "bf16")]
    if args.compile:
        kinds += [("ours+inductor", "no"), ("ours+inductor", "bf16")]
    if args.plain_bf16:
        kinds.append(("plain", "bf16"))
    if args.channels_last:
        kinds.append(("ceiling+channels_last", "no"))
    name = {"no": "fp32", "bf16": "bf16"}
    if args.only:
        kinds = [(kind, mp) for kind, mp in kinds if f"{kind} {name[mp]}" in set(args.only) | {"plain fp32"}]
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), torch threads {torch.get_num_threads()}; "
          f"UNet {args.unet_preset} at {args.resolution}x{args.resolution}x1 on {args.dataset}, {args.images} images "
          f"per run, "
          f"{args.rounds} rounds", flush=True)
    started = time.time()
    for batch_size in args.batch_sizes:
        steps = max(30, args.images // batch_size)
        rates = {f"{kind} {name[mp]}": [] for kind, mp in kinds}
        steady = {key: [] for key in rates}
        for round_ in range(args.rounds):
            for kind, mp in kinds:
                rate, steady_rate = measure(args, kind, mp, steps, batch_size)
                rates[f"{kind} {name[mp]}"].append(rate)
                steady[f"{kind} {name[mp]}"].append(steady_rate)
            print(f"  batch {batch_size}, round {round_ + 1}: " + ", ".join(
                f"{k} {v[-1]:.0f}" for k, v in rates.items()) + " images/s", flush=True)
        plain = rates["plain fp32"]
        print(f"\nbatch {batch_size}, {steps} steps per run: median images/s over {args.rounds} rounds")
        print("| run | images/s (whole run) | / plain fp32 (per round) | / ceiling of its precision | "
              "after the first step: images/s, / plain fp32 | goal | result |")
        print("|---|---|---|---|---|---|---|")
        for key, values in rates.items():
            ratios = [v / b for v, b in zip(values, plain)]
            ceilings = rates.get("ceiling " + key.split()[-1])
            ceiling = statistics.median(ceilings) if ceilings else float("nan")
            goal = GOALS.get(key)
            verdict = "" if goal is None else ("PASS" if statistics.median(ratios) >= goal else "FAIL")
            after = ""
            if all(v is not None for v in steady[key]):
                after = (f"{statistics.median(steady[key]):.0f}, "
                         f"{statistics.median([v / b for v, b in zip(steady[key], plain)]):.2f}")
            print(f"| {key} | {statistics.median(values):.0f} | {statistics.median(ratios):.2f} "
                  f"({', '.join(f'{r:.2f}' for r in ratios)}) | "
                  f"{'' if key.startswith('ceiling') else f'{statistics.median(values) / ceiling:.2f}'} | "
                  f"{after} | {'' if goal is None else f'>= {goal}'} | {verdict} |")
        print(flush=True)
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()

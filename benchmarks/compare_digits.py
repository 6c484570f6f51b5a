"""The digits default against a plain diffusers training loop in the style of train_unconditional.py.

The baseline trains the same UNet architecture (train_unconditional.py's own 6-level UNet cannot run on 8x8 images)
for the same wall-clock budget with that script's defaults: DDPMScheduler (linear betas), batch 16, AdamW lr 1e-4,
cosine schedule with 500 warm-up steps, per-item PIL transforms every epoch through ``datasets.set_transform``, no EMA
(``--use_ema`` is off by default there); and once more with a tuned learning rate (``--lr``). Both are then scored
like ours: held-out bits/dim over the full 1000-term bound (``ddpm_hf.likelihood``) on the same 180 test digits, and
a grid of 36 samples drawn by diffusers' DDPMPipeline with 1000 steps.

    python benchmarks/compare_digits.py --budget 395 --lr 1e-4 --output_dir outputs/compare/default
    python benchmarks/compare_digits.py --budget 395 --lr 1e-3 --batch_size 128 --output_dir outputs/compare/tuned
    python benchmarks/compare_digits.py --steps 1478 --lr 1e-3 --batch_size 128 --warmup 100 \
        --output_dir outputs/compare/tuned    # the steps 395 s gave on a quiet machine, whatever the load now
    ddpm-hf evaluate outputs/compare/tuned/pipeline --metrics digits --num_samples 500   # its samples, scored

The trained baseline is saved as a diffusers DDPMPipeline in OUTPUT_DIR/pipeline.
"""

import argparse
import json
import os
import time

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=395.0, help="training seconds (ours trains 395 s in make demo)")
    p.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead of --budget seconds "
                   "(the same work whatever else runs on the machine; the cosine schedule spans them)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/compare/default")
    p.add_argument("--save_steps", type=int, nargs="*", default=[],
                   help="also save the pipeline at these steps (OUTPUT_DIR/pipeline-STEP; their training seconds go "
                        "to metrics.json's 'saves'), for a curve of quality against training time")
    p.add_argument("--no_bits_per_dim", action="store_true",
                   help="skip the held-out bound (about 5 minutes of one core; recipe_search.py scores samples instead)")
    args = p.parse_args()

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler

    from ddpm_hf.data import cache_images, load_digits_dataset
    from ddpm_hf.images import make_grid
    from ddpm_hf.evaluation import evaluate_bits_per_dim
    from ddpm_hf.unet_configs import unet_config

    torch.manual_seed(args.seed)
    data = load_digits_dataset()
    train = data["train"]

    def transform(batch):  # per item, every epoch, as train_unconditional.py's torchvision pipeline does
        images = []
        for image in batch["image"]:
            array = np.asarray(image.convert("L").resize((8, 8)), dtype=np.float32) / 255.0
            images.append(torch.from_numpy((array - 0.5) / 0.5)[None])
        return {"input": images}

    train.set_transform(transform)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model = UNet2DModel(**unet_config("cpu-8"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    # the number of steps is set by the budget; the cosine schedule assumes the step count that fits it, measured
    # on the first 20 steps
    lr_scheduler = None
    if args.steps:
        lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=args.warmup,
                                     num_training_steps=args.steps)

    def done():
        return steps >= args.steps if args.steps else time.time() - start >= args.budget

    steps, seen, start, losses, saves = 0, 0, time.time(), [], []
    model.train()
    while not done():
        for batch in loader:
            clean = batch["input"]
            noise = torch.randn(clean.shape)
            t = torch.randint(0, 1000, (clean.shape[0],)).long()
            noisy = scheduler.add_noise(clean, noise, t)
            loss = torch.nn.functional.mse_loss(model(noisy, t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if lr_scheduler is not None:
                lr_scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.detach().item())
            steps += 1
            seen += clean.shape[0]
            if steps in args.save_steps:  # the clock stops while saving
                saves.append({"step": steps, "seconds": round(time.time() - start, 1)})
                paused = time.time()
                DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(
                    os.path.join(args.output_dir, f"pipeline-{steps}"))
                start += time.time() - paused
            if steps == 20 and not args.steps:
                per_step = (time.time() - start) / 20
                total = int(args.budget / per_step)
                lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=args.warmup,
                                             num_training_steps=total)
                for _ in range(20):
                    lr_scheduler.step()
            if done():
                break
    train_seconds = time.time() - start
    model.eval()

    os.makedirs(args.output_dir, exist_ok=True)
    pipe = DDPMPipeline(unet=model, scheduler=scheduler)
    pipe.save_pretrained(os.path.join(args.output_dir, "pipeline"))  # for `ddpm-hf evaluate .../pipeline`
    pipe.set_progress_bar_config(disable=True)
    sample_start = time.time()
    images = pipe(batch_size=36, generator=torch.Generator().manual_seed(args.seed), num_inference_steps=1000,
                  output_type="np").images
    sampling_seconds = time.time() - sample_start
    make_grid(images, title=f"plain diffusers loop, lr {args.lr}, batch {args.batch_size}: {steps} steps, "
                            f"1000 sampling steps").save(os.path.join(args.output_dir, "grid.png"))

    result = {}
    if not args.no_bits_per_dim:
        held_out = cache_images(data["test"], "image", 8, 1, progress=False)
        result = evaluate_bits_per_dim(model, scheduler, held_out, 256, args.seed, progress=False)
    metrics = {"steps": steps, "images_seen": seen, "train_seconds": round(train_seconds, 1),
               "images_per_second": round(seen / train_seconds, 1), "sampling_seconds": round(sampling_seconds, 1),
               "final_loss_mean_last_100": float(np.mean(losses[-100:])), **result, "lr": args.lr,
               "batch_size": args.batch_size, "saves": saves}
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()

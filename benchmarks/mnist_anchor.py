"""The anchor of issue 29: diffusers' own examples/unconditional_image_generation/train_unconditional.py on the same
4,500 embedded MNIST training digits, and the scoring of what it trained with the MNIST metric, beside ddpm-hf.

The script is diffusers' (not part of this repository): take it from the diffusers repository at the release you
compare with (examples/unconditional_image_generation/train_unconditional.py). It imports torchvision, which does
not import beside this project's CPU torch, so it runs in a second environment with torch and torchvision of one
release (e.g. `pip install torch==2.14.1 torchvision==0.29.1 diffusers==0.42.1 accelerate datasets tensorboard`).
It forces RGB and needs a resolution divisible by 32 for its six-level UNet (113.7M parameters): the 28x28 digits are
resized to 32 by its own transforms, and its samples are brought back to one channel (PIL "L") and 28x28 (bilinear)
before scoring against the 28x28 held-out digits.

    python benchmarks/mnist_anchor.py export outputs/anchor/mnist-train-png       # the 4,500 training digits
    OMP_NUM_THREADS=1 ANCHOR_PYTHON train_unconditional.py --train_data_dir outputs/anchor/mnist-train-png \\
        --resolution 32 --output_dir outputs/anchor/default-s0 --train_batch_size 16 --num_epochs 1 \\
        --save_images_epochs 100 --save_model_epochs 100 --eval_batch_size 4 --ddpm_num_inference_steps 20
    python benchmarks/mnist_anchor.py score outputs/anchor/default-s0 --scheduler dpmsolver++ --steps 20 \\
        --num_samples 500          # -> outputs/anchor/default-s0/mnist-score-dpmsolver++-20.json and a grid

The anchor's saved DDPMPipeline is loaded here (diffusers of the same release), its scheduler swapped by
``ddpm_hf.sampling.SCHEDULERS`` (diffusers' from_config), and each image drawn with its own generator (seed + i).
"""

import argparse
import json
import os
import time

import numpy as np
import torch


def export(folder):
    """The embedded MNIST training split as PNG files (an image folder for train_unconditional.py's
    --train_data_dir), one flat folder so that datasets' imagefolder makes no label column."""
    from ddpm_hf.data import load_mnist_dataset

    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(load_mnist_dataset()["train"]["image"]):
        image.save(os.path.join(folder, f"{i:04d}.png"))
    print(f"wrote {len(os.listdir(folder))} images to {folder}")


def to_mnist_uint8(images):
    """(N, H, W, 3) samples in [0, 1] -> uint8 (N, 1, 28, 28): PIL's "L" conversion and a bilinear resize to 28."""
    from PIL import Image

    out = []
    for array in images:
        image = Image.fromarray(np.round(array * 255).astype(np.uint8)).convert("L")
        if image.size != (28, 28):
            image = image.resize((28, 28), Image.BILINEAR)
        out.append(np.asarray(image, dtype=np.uint8)[None])
    return torch.from_numpy(np.stack(out))


def score(folder, scheduler, steps, num_samples, batch_size, seed):
    from diffusers import DDPMPipeline

    from ddpm_hf.evaluation.mnist import mnist_metric
    from ddpm_hf.images import make_grid
    from ddpm_hf.sampling import use_scheduler

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    pipe = use_scheduler(DDPMPipeline.from_pretrained(folder), None if scheduler == "own" else scheduler)
    pipe.set_progress_bar_config(disable=True)
    start = time.time()
    images = []
    for start_index in range(0, num_samples, batch_size):  # image i drawn with its own generator, seed + i
        n = min(batch_size, num_samples - start_index)
        generators = [torch.Generator().manual_seed(seed + start_index + i) for i in range(n)]
        images.append(pipe(batch_size=n, generator=generators, num_inference_steps=steps, output_type="np").images)
    images = np.concatenate(images)
    seconds = time.time() - start
    samples = to_mnist_uint8(images)
    result = {"model": os.path.basename(os.path.normpath(folder)), "scheduler": scheduler, "steps": steps,
              "seed": seed, "sampling_seconds": round(seconds, 1), **mnist_metric(samples)}
    name = f"mnist-score-{scheduler}-{steps}"
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    grid = samples[:64].permute(0, 2, 3, 1).numpy() / 255.0
    make_grid(grid, title=f"train_unconditional.py {result['model']}: {scheduler} {steps} steps, seed {seed}").save(
        os.path.join(folder, f"{name}.png"))
    print(json.dumps({k: v for k, v in result.items() if "histogram" not in k}, indent=2))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write the 4,500 MNIST training digits as PNG files")
    e.add_argument("folder")
    s = sub.add_parser("score", help="sample a train_unconditional.py output folder and score it")
    s.add_argument("folder", help="the --output_dir of train_unconditional.py (a saved DDPMPipeline)")
    s.add_argument("--scheduler", default="own", help="own (the pipeline's DDPMScheduler) or a name of "
                   "ddpm_hf.sampling.SCHEDULERS")
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--num_samples", type=int, default=1000)
    s.add_argument("--batch_size", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.command == "export":
        export(args.folder)
    else:
        score(args.folder, args.scheduler, args.steps, args.num_samples, args.batch_size, args.seed)


if __name__ == "__main__":
    main()

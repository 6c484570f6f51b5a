"""``ddpm-hf sample``: images from a saved pipeline (a folder or a Hub repo id)."""

import os
import time

from .common import check_positive, fail


def add_parser(sub):
    p = sub.add_parser("sample", help="generate images from a saved pipeline (folder or Hub repo id)")
    p.add_argument("model", help="a folder written by save_pretrained, or a Hub repo id (namespace/name)")
    p.add_argument("--num_images", type=int, default=16, help="how many images (default 16)")
    p.add_argument("--batch_size", "--eval_batch_size", dest="batch_size", type=int, default=16,
                   help="images per forward pass (default 16; --eval_batch_size is the same, as `train` spells it)")
    p.add_argument("--num_inference_steps", "--ddpm_num_inference_steps", dest="num_inference_steps", type=int,
                   default=None, help="reverse steps (default: the number of training timesteps, e.g. 1000; "
                   "--ddpm_num_inference_steps is the same, as `train` spells it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generators; image i uses seed + i (default 0)")
    p.add_argument("--output_dir", default="samples", help="where the PNGs go (default ./samples)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--strip", action="store_true", help="also write a denoising strip x_T ... x_0")
    return p


def run(args, parser):
    check_positive(parser, num_images=args.num_images, batch_size=args.batch_size,
                   num_inference_steps=args.num_inference_steps)
    import torch

    from ..errors import ModelNotFound
    from ..pipeline_ddpm_hf import DDPMHFPipeline
    from ..sampling import generate, load_pipeline, write_samples

    try:
        pipe = load_pipeline(DDPMHFPipeline, args.model, **({"revision": args.revision} if args.revision else {}))
    except ModelNotFound as error:
        fail(parser, error)
    T = pipe.scheduler.config.num_train_timesteps
    steps = args.num_inference_steps or T
    if steps > T:
        parser.error(f"--num_inference_steps {steps}: the model was trained with {T} timesteps; give at most {T}")
    start = time.time()
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    images, strip = generate(pipe, args.num_images, args.batch_size, steps, args.seed, strip=args.strip)
    name = os.path.basename(os.path.normpath(args.model))
    title = f"{name}: {args.num_images} samples, {steps} steps, seed {args.seed}"
    write_samples(pipe, images, args.output_dir, title, strip)
    grid = os.path.join(args.output_dir, "grid.png")
    print(f"wrote {args.num_images} images and {grid} in {time.time() - start:.1f}s")

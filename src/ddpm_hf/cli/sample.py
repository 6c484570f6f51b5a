"""``ddpm-hf sample``: images from a saved pipeline (a folder or a Hub repo id)."""

import inspect
import os
import time

from ..sampling import SCHEDULERS
from .common import check_positive, fail


def add_parser(sub):
    p = sub.add_parser("sample", help="generate images from a saved pipeline (folder or Hub repo id)")
    p.add_argument("model", help="a folder written by save_pretrained, or a Hub repo id (namespace/name)")
    p.add_argument("--num_images", type=int, default=16,
                   help="how many images (default 16); per class for a class-conditional model")
    p.add_argument("--batch_size", "--eval_batch_size", dest="batch_size", type=int, default=16,
                   help="images per forward pass (default 16; --eval_batch_size is the same, as `train` spells it)")
    p.add_argument("--num_inference_steps", "--ddpm_num_inference_steps", dest="num_inference_steps", type=int,
                   default=None, help="reverse steps (default: the model's own, e.g. 4 for a distilled student, "
                   "else the number of training timesteps, e.g. 1000; "
                   "--ddpm_num_inference_steps is the same, as `train` spells it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generators; image i uses seed + i (default 0)")
    p.add_argument("--output_dir", default="samples", help="where the PNGs go (default ./samples)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--strip", action="store_true", help="also write a denoising strip x_T ... x_0")
    p.add_argument("--scheduler", choices=list(SCHEDULERS), default=None,
                   help="the sampler, made from the model's scheduler config as diffusers' from_config swaps them "
                   "(default: the model's own; ddpm is ddpm-hf's ancestral sampler)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM's eta (Song et al. 2021 eq. 16) for samplers whose step takes it (ddim, a distilled "
                   "student): 0 = deterministic (default), 1 = as much fresh noise as the ancestral chain")
    p.add_argument("--class_labels", nargs="+", default=None,
                   help="class-conditional models: the classes to draw, as ids (or names), --num_images of each, one "
                   "labelled grid row per class (default: every class)")
    p.add_argument("--guidance_scale", type=float, default=None,
                   help="class-conditional models: classifier-free guidance scale s in diffusers' convention: 1 = the "
                   "conditional model alone, larger = stronger guidance (default: the model's own, measured for it "
                   "and stored in its model_index.json, else DEFAULT_GUIDANCE_SCALE)")
    return p


def run(args, parser):
    check_positive(parser, num_images=args.num_images, batch_size=args.batch_size,
                   num_inference_steps=args.num_inference_steps)
    import torch

    from ..errors import ModelNotFound
    from ..pipeline_ddpm_hf import DDPMHFPipeline
    from ..sampling import class_rows, generate, load_pipeline, use_scheduler, write_samples

    try:
        pipe = load_pipeline(DDPMHFPipeline, args.model, **({"revision": args.revision} if args.revision else {}))
    except ModelNotFound as error:
        fail(parser, error)
    T = pipe.scheduler.config.num_train_timesteps
    steps = args.num_inference_steps or getattr(pipe.config, "num_inference_steps", None) or T
    if steps > T:
        parser.error(f"--num_inference_steps {steps}: the model was trained with {T} timesteps; give at most {T}")
    try:
        use_scheduler(pipe, args.scheduler)
        pipe.check_inputs(1, None, steps, None, "np", [])  # e.g. a distilled student's step limit
        labels, rows = class_rows(pipe, args.class_labels, args.num_images)
        if labels is not None:  # checked here, before sampling: unknown ids and names
            pipe._class_ids(labels, None)
    except ValueError as error:
        fail(parser, error)
    if args.eta and "eta" not in inspect.signature(pipe.scheduler.step).parameters:
        parser.error(f"--eta: the sampler {type(pipe.scheduler).__name__} takes no eta (ddim and distilled students "
                     "do); leave it out")
    if args.eta < 0:
        parser.error(f"--eta must be >= 0, got {args.eta}")
    if args.guidance_scale is not None and labels is None:
        parser.error("--guidance_scale: this model is unconditional (no class embeddings); leave it out")
    start = time.time()
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    count = len(labels) if labels is not None else args.num_images
    images, strip = generate(pipe, count, args.batch_size, steps, args.seed, strip=args.strip, class_labels=labels,
                             guidance_scale=args.guidance_scale, eta=args.eta)
    name = os.path.basename(os.path.normpath(args.model))
    sampler = args.scheduler or type(pipe.scheduler).__name__
    title = f"{name}: {count} samples, {sampler}, {steps} steps, seed {args.seed}"
    if args.eta:
        title += f", eta {args.eta:g}"
    if labels is not None:
        title += f", guidance {pipe._guidance_scale(args.guidance_scale, labels)}"
    write_samples(pipe, images, args.output_dir, title, strip, row_labels=rows)
    grid = os.path.join(args.output_dir, "grid.png")
    print(f"wrote {count} images and {grid} in {time.time() - start:.1f}s")


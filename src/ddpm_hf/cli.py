"""The ``ddpm-hf`` command: ``train`` (see ddpm_hf.training), ``sample`` from a saved pipeline, ``card`` and ``push``
a finished training run."""

import argparse
import os
import sys
import time


def _sample_parser(sub):
    p = sub.add_parser("sample", help="generate images from a saved pipeline (folder or Hub repo id)")
    p.add_argument("model", help="a folder written by save_pretrained, or a Hub repo id (namespace/name)")
    p.add_argument("--num_images", type=int, default=16, help="how many images (default 16)")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--num_inference_steps", type=int, default=None,
                   help="reverse steps (default: the number of training timesteps, e.g. 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generators; image i uses seed + i (default 0)")
    p.add_argument("--output_dir", default="samples", help="where the PNGs go (default ./samples)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--strip", action="store_true", help="also write a denoising strip x_T ... x_0")
    return p


def _card_parser(sub):
    p = sub.add_parser("card", help="(re)write the model card of a training run: OUTPUT_DIR/README.md")
    p.add_argument("output_dir", help="the --output_dir of a finished training run")
    p.add_argument("--hub_model_id", default=None, help="the Hub repo id the card's loading example names")
    return p


def _push_parser(sub):
    p = sub.add_parser("push", help="upload a training run's pipeline with its model card, pictures, metrics.json "
                       "and training_args.json to the Hub (never checkpoints or logs)")
    p.add_argument("output_dir", help="the --output_dir of a finished training run")
    p.add_argument("--hub_model_id", required=True, help="the repo id to push to (namespace/name)")
    p.add_argument("--hub_private_repo", action="store_true", help="create the repo private")
    p.add_argument("--hub_token", default=None, help="a Hub token (default: HF_TOKEN or the stored login)")
    return p


def _check_run(parser, output_dir):
    from .model_card import LayoutError, check_run

    try:
        check_run(output_dir)
    except LayoutError as error:
        parser.error(str(error))


def cmd_card(args, parser):
    _check_run(parser, args.output_dir)
    from .model_card import write_model_card

    print(f"wrote {write_model_card(args.output_dir, repo_id=args.hub_model_id)}")


def cmd_push(args, parser):
    _check_run(parser, args.output_dir)
    from .model_card import push_run, write_model_card

    write_model_card(args.output_dir, repo_id=args.hub_model_id)
    push_run(args.output_dir, args.hub_model_id, private=args.hub_private_repo, token=args.hub_token)
    print(f"pushed {args.output_dir} to {args.hub_model_id}")


def _check_positive(parser, **values):
    for name, value in values.items():
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")


def cmd_sample(args, parser):
    _check_positive(parser, num_images=args.num_images, batch_size=args.batch_size,
                    num_inference_steps=args.num_inference_steps)
    from . import DDPMHFPipeline
    from .sampling import generate, write_samples

    kwargs = {"revision": args.revision} if args.revision else {}
    pipe = DDPMHFPipeline.from_pretrained(args.model, **kwargs)
    steps = args.num_inference_steps or pipe.scheduler.config.num_train_timesteps
    start = time.time()
    import torch

    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    images, strip = generate(pipe, args.num_images, args.batch_size, steps, args.seed, strip=args.strip)
    title = f"{os.path.basename(os.path.normpath(args.model))}: {args.num_images} samples, {steps} steps, seed {args.seed}"
    write_samples(pipe, images, args.output_dir, title, strip)
    grid = os.path.join(args.output_dir, "grid.png")
    print(f"wrote {args.num_images} images and {grid} in {time.time() - start:.1f}s")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the training flags live in ddpm_hf.training (shared with scripts/train.py)
        from .training import main as train_main

        train_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="ddpm-hf", description="DDPM for Hugging Face diffusers")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a DDPM (see `ddpm-hf train --help`)", add_help=False)
    commands = {"sample": (_sample_parser(sub), cmd_sample), "card": (_card_parser(sub), cmd_card),
                "push": (_push_parser(sub), cmd_push)}
    args = parser.parse_args(argv)
    sub_parser, run = commands[args.command]
    run(args, sub_parser)


if __name__ == "__main__":
    sys.exit(main())

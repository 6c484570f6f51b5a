"""The ``ddpm-hf`` command: ``train`` (see ddpm_hf.training), ``sample`` from a saved pipeline, ``evaluate`` a model
(ddpm_hf.scoring), ``card`` and ``push`` a finished training run; ``inpaint``, ``upscale``, ``img2img`` and ``denoise``
an image with a trained model (ddpm_hf.restoration_cli)."""

import argparse
import os
import signal
import sys
import time

from . import restoration_cli


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
    p.add_argument("--hub_private_repo", action="store_true",
                   help="create the repo private (an existing public repo is refused, never made private)")
    p.add_argument("--hub_revision", default=None, help="the branch to push to, created from main if missing "
                   "(default main)")
    p.add_argument("--hub_token", default=None, help="a Hub token (default: HF_TOKEN or the stored login)")
    return p


def _evaluate_parser(sub):
    p = sub.add_parser("evaluate", help="score a model: bits/dim, FID, KID, precision/recall, the digits metric",
                       description="Score a trained model and write eval-NAME.json (and plots) beside it; the headline "
                       "numbers go into its metrics.json. The data defaults to the run's own (training_args.json).")
    p.add_argument("model", help="a training output folder, a pipeline folder or a Hub repo id")
    p.add_argument("--metrics", default="bpd", help="comma-separated, from bpd, fid, kid, prc, digits (default bpd; "
                   "fid/kid/prc need the Inception weights, digits is offline and for the embedded digits only)")
    p.add_argument("--num_samples", type=int, default=1000, help="samples for fid/kid/prc/digits (default 1000)")
    p.add_argument("--num_inference_steps", default=None,
                   help="sampling steps, or a comma-separated list to score each (e.g. 1000,250,100,50); default T")
    p.add_argument("--batch_size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--timestep_spacing", choices=("leading", "trailing", "linspace"), default=None,
                   help="how fewer sampling steps are spread over the T timesteps (default: the model's scheduler's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (image i: seed + i) and of the bound")
    p.add_argument("--dataset_name", default=None, help="data to score against (default: the run's)")
    p.add_argument("--dataset_config_name", default=None)
    p.add_argument("--train_data_dir", default=None, help="a folder of images to score against")
    p.add_argument("--split", default="test", help="held-out split for bpd (default test)")
    p.add_argument("--reference_split", default="train",
                   help="the real images the sample metrics compare with (default train)")
    p.add_argument("--max_eval_images", type=int, default=None, help="at most this many images for bpd")
    p.add_argument("--max_reference_images", type=int, default=50_000, help="at most this many reference images")
    p.add_argument("--bpd_timesteps", type=int, default=None,
                   help="estimate the bound from this many of its T terms per image (stratified; default all T)")
    p.add_argument("--inception_weights", default=None,
                   help="the TF-Inception TorchScript file (inception-2015-12-05.pt); default: the torch hub cache, "
                   "downloaded there if missing")
    p.add_argument("--name", default=None, help="the evaluation's name: eval-NAME.json (default: today's date)")
    p.add_argument("--output_dir", default=None, help="where eval-NAME.json goes (default: the model's folder)")
    p.add_argument("--update_model_card", action="store_true", help="re-render the run's README.md with the scores")
    return p


def cmd_evaluate(args, parser):
    _check_positive(parser, num_samples=args.num_samples, batch_size=args.batch_size,
                    max_eval_images=args.max_eval_images, max_reference_images=args.max_reference_images)
    from .inception import InceptionWeightsMissing
    from .scoring import ALL_METRICS, evaluate

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown or not metrics:
        parser.error(f"--metrics {args.metrics}: choose from {', '.join(ALL_METRICS)}")
    steps = [None]
    if args.num_inference_steps:
        try:
            steps = [int(s) for s in args.num_inference_steps.split(",")]
        except ValueError:
            parser.error(f"--num_inference_steps {args.num_inference_steps}: integers separated by commas")
        _check_positive(parser, num_inference_steps=min(steps))
    try:
        report = evaluate(args.model, metrics, args.num_samples, steps, args.seed, args.batch_size, args.split,
                          args.reference_split, args.dataset_name, args.train_data_dir, args.dataset_config_name,
                          args.max_eval_images, args.max_reference_images, args.inception_weights, args.bpd_timesteps,
                          args.name, args.output_dir, args.update_model_card,
                          timestep_spacing=args.timestep_spacing)
    except (InceptionWeightsMissing, OSError, ValueError) as error:  # OSError: e.g. a model file missing
        parser.error(str(error))
    print(f"wrote {report['path']}")


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
    from .model_card import PushError, push_failure_message, push_run, write_model_card

    write_model_card(args.output_dir, repo_id=args.hub_model_id)

    def stop(signum, _frame):
        # Ctrl-C or SIGTERM: huggingface_hub's upload threads may be sleeping out a Retry-After, and a normal exit
        # would wait for them (minutes); nothing local is being written, so say how to resume and leave at once
        message = push_failure_message(KeyboardInterrupt(), args.output_dir, args.hub_model_id,
                                       args.hub_private_repo, args.hub_revision, args.hub_token)
        sys.stdout.flush()
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        info = push_run(args.output_dir, args.hub_model_id, private=args.hub_private_repo, token=args.hub_token,
                        revision=args.hub_revision)
    except PushError as error:
        parser.error(str(error))
    except Exception as error:  # huggingface_hub has retried what it retries: say how to resume
        message = push_failure_message(error, args.output_dir, args.hub_model_id, args.hub_private_repo,
                                       args.hub_revision, args.hub_token)
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    branch = f" (branch {args.hub_revision})" if args.hub_revision else ""
    print(f"pushed {args.output_dir} to {args.hub_model_id}{branch}: {info.commit_url}")


def _check_positive(parser, **values):
    for name, value in values.items():
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")


def load_pipeline(parser, cls, model, **kwargs):
    """``cls.from_pretrained(model)``, or one error line (exit 2) naming what is wrong with the folder and the fix."""
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "model_index.json")):
        parser.error(f"{model} is not a model folder: no model_index.json in it. Give a folder written by "
                     "save_pretrained or `ddpm-hf train` (model_index.json, unet/, scheduler/), or a Hub repo id")
    if not os.path.isdir(model) and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        parser.error(f"{model}: no such folder (nor a Hub repo id namespace/name)")
    try:
        return cls.from_pretrained(model, **kwargs)
    except Exception as error:  # noqa: BLE001 - a damaged or foreign folder, a missing repo: one clear line
        detail = str(error).strip().splitlines()[0][:400] if str(error).strip() else ""
        parser.error(f"cannot load the pipeline {model} ({type(error).__name__}: {detail}). It needs "
                     "model_index.json, unet/config.json with unet/diffusion_pytorch_model.safetensors of the same "
                     "shapes, and scheduler/scheduler_config.json: save it again (or download it again), or give "
                     "another folder or repo id")


def cmd_sample(args, parser):
    _check_positive(parser, num_images=args.num_images, batch_size=args.batch_size,
                    num_inference_steps=args.num_inference_steps)
    from . import DDPMHFPipeline
    from .sampling import generate, write_samples

    kwargs = {"revision": args.revision} if args.revision else {}
    pipe = load_pipeline(parser, DDPMHFPipeline, args.model, **kwargs)
    T = pipe.scheduler.config.num_train_timesteps
    steps = args.num_inference_steps or T
    if steps > T:
        parser.error(f"--num_inference_steps {steps}: the model was trained with {T} timesteps; give at most {T}")
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
        from .cli_train import main as train_main

        train_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="ddpm-hf", description="DDPM for Hugging Face diffusers")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a DDPM (see `ddpm-hf train --help`)", add_help=False)
    commands = {"sample": (_sample_parser(sub), cmd_sample), "card": (_card_parser(sub), cmd_card),
                "push": (_push_parser(sub), cmd_push), "evaluate": (_evaluate_parser(sub), cmd_evaluate)}
    commands.update(restoration_cli.add_parsers(sub))  # inpaint, upscale, img2img, denoise
    args = parser.parse_args(argv)
    sub_parser, run = commands[args.command]
    run(args, sub_parser)


if __name__ == "__main__":
    sys.exit(main())

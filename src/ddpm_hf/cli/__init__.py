"""The ``ddpm-hf`` command, one parser tree: ``train`` (ddpm_hf.training), ``sample`` from a saved pipeline,
``evaluate`` a model (ddpm_hf.evaluation), ``distill`` it into a few-step student (ddpm_hf.distillation), ``card`` and ``push`` a finished training run (ddpm_hf.model_card,
ddpm_hf.hub); ``inpaint``, ``upscale``, ``img2img`` and ``denoise`` an image with a trained model.

One module per command group (sample, evaluate, hub, restoration, train). Building the tree imports nothing heavy:
torch, diffusers and the pipelines are imported by the command that runs. Only this package turns the library's
typed errors (ddpm_hf.errors) into a message that names a flag; nothing imports it.
"""

import argparse
import sys

from . import distill, evaluate, hub, restoration, sample


def build_parser():
    """The ``ddpm-hf`` parser and {command: (its parser, the function that runs it)}. ``train`` is listed here;
    its own flags are parsed by the training command."""
    parser = argparse.ArgumentParser(prog="ddpm-hf", description="DDPM for Hugging Face diffusers")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a DDPM (see `ddpm-hf train --help`)", add_help=False)
    commands = {"sample": (sample.add_parser(sub), sample.run),
                "card": (hub.add_card_parser(sub), hub.run_card),
                "push": (hub.add_push_parser(sub), hub.run_push),
                "evaluate": (evaluate.add_parser(sub), evaluate.run),
                "distill": (distill.add_parser(sub), distill.run)}
    commands.update(restoration.add_parsers(sub))  # inpaint, upscale, img2img, denoise
    return parser, commands


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the training command parses its own flags (shared with scripts/train.py)
        from .train import main as train_main

        train_main(argv[1:])
        return
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    command_parser, run = commands[args.command]
    run(args, command_parser)

"""``ddpm-hf card`` and ``ddpm-hf push``: (re)write a finished run's model card; upload the run to the Hub."""

import os
import signal
import sys

from .common import fail, flag_message

# the push's argument names -> this command's flags
FLAGS = {"private": "hub_private_repo", "revision": "hub_revision", "token": "hub_token"}


def add_card_parser(sub):
    p = sub.add_parser("card", help="(re)write the model card of a training run: OUTPUT_DIR/README.md",
                       description="Render the model card of a finished training run into OUTPUT_DIR/README.md. A "
                       "card you edited by hand is never replaced without --replace_edited_card.")
    p.add_argument("output_dir", help="the --output_dir of a finished training run")
    p.add_argument("--hub_model_id", default=None, help="the Hub repo id the card's loading example names")
    p.add_argument("--replace_edited_card", "--force", dest="replace_edited_card", action="store_true",
                   help="replace README.md even if it was edited by hand (--force is the same)")
    return p


def add_push_parser(sub):
    p = sub.add_parser("push", help="upload a training run's pipeline with its model card, pictures, metrics.json "
                       "and training_args.json to the Hub (never checkpoints or logs; nothing in the run is written)",
                       description="Upload a finished training run to the Hub. The card uploaded is the run's "
                       "README.md when you edited it, else the card rendered for --hub_model_id; the run itself is "
                       "never written, so a failed push leaves it as it was.")
    p.add_argument("output_dir", help="the --output_dir of a finished training run")
    p.add_argument("--hub_model_id", required=True, help="the repo id to push to (namespace/name)")
    p.add_argument("--hub_private_repo", action="store_true",
                   help="create the repo private (an existing public repo is refused, never made private)")
    p.add_argument("--hub_revision", default=None, help="the branch to push to, created from main if missing "
                   "(default main)")
    p.add_argument("--hub_token", default=None, help="a Hub token (default: HF_TOKEN or the stored login)")
    return p


def _check_run(parser, output_dir):
    from ..errors import LayoutError
    from ..run_dir import check_run

    try:
        check_run(output_dir)
    except LayoutError as error:
        fail(parser, error)


def run_card(args, parser):
    _check_run(parser, args.output_dir)
    from ..errors import CardEdited
    from ..model_card import write_model_card

    try:
        path = write_model_card(args.output_dir, repo_id=args.hub_model_id,
                                replace_edited_card=args.replace_edited_card)
    except CardEdited as error:
        fail(parser, error)
    print(f"wrote {path}")


def run_push(args, parser):
    _check_run(parser, args.output_dir)
    from ..errors import PushError
    from ..hub import push_failed, push_run

    def stop(signum, _frame):
        # Ctrl-C or SIGTERM: huggingface_hub's upload threads may be sleeping out a Retry-After, and a normal exit
        # would wait for them (minutes); nothing local is being written, so say how to resume and leave at once
        message = flag_message(push_failed(KeyboardInterrupt(), args.output_dir, args.hub_model_id,
                                           args.hub_private_repo, args.hub_revision, args.hub_token))
        sys.stdout.flush()
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        info = push_run(args.output_dir, args.hub_model_id, private=args.hub_private_repo, token=args.hub_token,
                        revision=args.hub_revision, log=print)
    except PushError as error:
        fail(parser, error, FLAGS)
    except Exception as error:  # huggingface_hub has retried what it retries: say how to resume
        message = flag_message(push_failed(error, args.output_dir, args.hub_model_id, args.hub_private_repo,
                                           args.hub_revision, args.hub_token))
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    branch = f" (branch {args.hub_revision})" if args.hub_revision else ""
    print(f"pushed {args.output_dir} to {args.hub_model_id}{branch}: {info.commit_url}")

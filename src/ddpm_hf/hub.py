"""Pushing a finished training run to the Hub: what goes up (the pipeline, README.md, images/, metrics.json,
training_args.json; never checkpoints, logs or samples), the card that goes with it, and what to say when it fails.

A push writes nothing in the run: the upload is staged in a temporary folder of links to the run's files, beside
the model card to upload. That card is the run's README.md as it is when the user edited it
(``model_card.edited_by_hand``), else the card rendered for the repo pushed to. The upload itself is
``pipeline_ddpm_hf_hub.upload_folder_to_hub``, the one upload path of ddpm-hf (``save_pretrained(push_to_hub=True)``
uses it too).
"""

import contextlib
import json
import os
import tempfile

from .errors import PushError, PushFailed
from .model_card import PICTURES, card_text, edited_by_hand
from .pipeline_ddpm_hf_hub import upload_folder_to_hub
from .run_dir import HISTORY, LOCK_NAME, MODEL_CARD, TRAINING_ARGS, check_run

# what a push leaves out of --output_dir (huggingface_hub ignore_patterns, as diffusers' scripts pass them)
PUSH_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "logs/**", "samples/**", "samples-*/**", HISTORY,
                        "loss.png", "*.tmp", "*.tmp/**", LOCK_NAME]  # the lock names the host
CARD = MODEL_CARD


def push_ignore_patterns(output_dir):
    """``PUSH_IGNORE_PATTERNS`` plus the run's own ``logging_dir`` (from training_args.json) when it lies inside
    ``output_dir``."""
    patterns = list(PUSH_IGNORE_PATTERNS)
    args_path = os.path.join(output_dir, TRAINING_ARGS)
    if os.path.isfile(args_path):
        with open(args_path) as f:
            logging_dir = json.load(f).get("logging_dir")
        if logging_dir:
            relative = os.path.relpath(os.path.join(output_dir, logging_dir), output_dir).replace(os.sep, "/")
            if not relative.startswith(".."):
                patterns.append(f"{relative}/**")
    return patterns


def push_failed(error, output_dir, repo_id, private=False, revision=None, token=None):
    """The PushFailed of a push of ``output_dir`` to ``repo_id`` that ended in ``error`` (KeyboardInterrupt: it was
    interrupted): what failed (the error's first line, and its cause's), and what to push again to resume. ``token``
    (one passed as an argument) is never in it, only that one was given."""
    def first_line(e):
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__

    if isinstance(error, KeyboardInterrupt):
        what = "was interrupted"
    else:
        reason = first_line(error)
        cause = error.__cause__ or error.__context__
        if cause is not None and str(cause).strip() and str(cause).strip().splitlines()[0] not in reason:
            reason += f" ({first_line(cause)})"
        what = "failed: " + (reason.replace(token, "<token>") if token else reason)
    return PushFailed(what, output_dir, repo_id, private, revision, token_given=bool(token))


def _link(source, destination):
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    os.symlink(os.path.abspath(source), destination)


@contextlib.contextmanager
def staged_upload(output_dir, repo_id):
    """A temporary folder holding what a push of ``output_dir`` uploads, as links to the run's files (nothing is
    copied, nothing in the run is written), and the card to upload. Yields (folder, the user's card kept as it
    is: True or False)."""
    from huggingface_hub.utils import filter_repo_objects

    root = os.path.abspath(output_dir)
    files = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                   for d, _, names in os.walk(root) for f in names)
    with tempfile.TemporaryDirectory(prefix="ddpm-hf-push-") as tmp:
        folder = os.path.join(tmp, os.path.basename(root))
        for rel in filter_repo_objects(files, ignore_patterns=push_ignore_patterns(root)):
            if rel != CARD:
                _link(os.path.join(root, rel), os.path.join(folder, rel))
        for old, new in PICTURES.values():  # where the card links them, as write_model_card puts them
            if os.path.isfile(os.path.join(root, old)) and not os.path.exists(os.path.join(folder, new)):
                _link(os.path.join(root, old), os.path.join(folder, new))
        edited = edited_by_hand(root, repo_id)
        if edited:
            _link(os.path.join(root, CARD), os.path.join(folder, CARD))
        else:
            with open(os.path.join(folder, CARD), "w", newline="", encoding="utf-8") as f:
                f.write(card_text(folder, repo_id))
        yield folder, edited


def push_run(output_dir, repo_id, private=None, token=None, revision=None, commit_message=None, log=None):
    """Upload a finished run to the Hub repo ``repo_id`` (created if missing, private if ``private``), on branch
    ``revision`` (created from main if missing; default main): the pipeline, its card (see the module docstring),
    images/, metrics.json and training_args.json; ``push_ignore_patterns`` keeps checkpoints, logs and samples out.
    Nothing in ``output_dir`` is written. ``log`` (e.g. print) hears when a hand-edited card goes up as it is.
    Returns the commit info.

    Raises PushError (argument "private") if ``private`` is asked for a repo that already exists and is public (a
    push never changes a repo's visibility); errors of huggingface_hub pass through after its own retries."""
    check_run(output_dir)
    with staged_upload(output_dir, repo_id) as (folder, edited):
        if edited and log:
            log(f"{os.path.join(output_dir, CARD)} was edited by hand since ddpm-hf wrote it: pushed as it is")
        try:
            return upload_folder_to_hub(folder, repo_id, token=token, private=private, revision=revision,
                                        commit_message=commit_message or "Upload DDPMHFPipeline trained with ddpm-hf",
                                        ignore_patterns=push_ignore_patterns(output_dir))
        except ValueError as error:
            if type(error) is not ValueError:  # e.g. huggingface_hub's HFValidationError of a bad repo id
                raise
            raise PushError(str(error), argument="private") from error

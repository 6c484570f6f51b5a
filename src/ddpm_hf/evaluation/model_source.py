"""Where ``ddpm-hf evaluate`` finds a model and how it was trained: the local folder holding model_index.json (a
training run, its old-layout ``pipeline/`` subfolder, or a pipeline folder) or a Hub repo id, and the run's
training_args.json (the data and flags evaluation defaults to)."""

import json
import os

from ..errors import ModelNotFound


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def model_folder(model):
    """The local folder of ``model`` that holds model_index.json (a run's output folder, its old-layout ``pipeline/``
    subfolder, or a pipeline folder), or None for a Hub repo id."""
    from ..run_dir import LEGACY_PIPELINE, MODEL_INDEX

    for folder in (model, os.path.join(model, LEGACY_PIPELINE)):
        if os.path.isfile(os.path.join(folder, MODEL_INDEX)):
            return folder
    if os.path.isdir(model):
        raise ModelNotFound(f"{model} is not a saved pipeline or training run: no model_index.json in it")
    return None


def training_args_of(model, folder):
    """The training_args.json of the run (local, or downloaded from the Hub repo), or {}."""
    from ..run_dir import TRAINING_ARGS

    if folder is not None:
        for path in (os.path.join(folder, TRAINING_ARGS), os.path.join(folder, "..", TRAINING_ARGS)):
            if os.path.isfile(path):
                return _read_json(path)
        return {}
    try:
        from huggingface_hub import hf_hub_download

        return _read_json(hf_hub_download(model, TRAINING_ARGS))
    except Exception:  # noqa: BLE001  (an older repo without it: fall back to the flags)
        return {}

"""Checkpoints in train_unconditional.py's format: ``checkpoint-N/`` written by ``accelerator.save_state`` with
``unet/`` and ``unet_ema/`` as diffusers ``UNet2DModel`` folders (safetensors; ``unet_ema``'s config also holds the
EMA's state, as ``EMAModel.save_pretrained`` writes it), plus the optimizer, LR schedule and RNG states accelerate
saves, and ``training_state.json`` with our counters (step, images seen, elapsed seconds).

A checkpoint is written to ``checkpoint-N.tmp`` and renamed by the main process only after every rank has finished
writing, so ``latest`` never picks a half-written one.
"""

import json
import os
import shutil

import torch

CHECKPOINT_PREFIX = "checkpoint-"
EMA_STATE_KEYS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma",
                  "power")


def checkpoint_step(name):
    """N of a ``checkpoint-N`` folder name."""
    return int(name[len(CHECKPOINT_PREFIX):])


def checkpoint_dirs(output_dir):
    """The names of the complete checkpoints in ``output_dir``, oldest first (``checkpoint-N``, N ascending)."""
    if not os.path.isdir(output_dir):
        return []
    names = [d for d in os.listdir(output_dir)
             if d.startswith(CHECKPOINT_PREFIX) and d[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(names, key=checkpoint_step)


def resolve_checkpoint(value, output_dir):
    """The checkpoint folder ``--resume_from_checkpoint value`` names: "latest" (the newest in ``output_dir``, or
    None when there is none), a ``checkpoint-N`` name inside ``output_dir`` (as diffusers' script takes it), or a path.
    Raises FileNotFoundError for a name or path that does not exist."""
    if value == "latest":
        names = checkpoint_dirs(output_dir)
        return os.path.join(output_dir, names[-1]) if names else None
    for path in (os.path.join(output_dir, value), value):
        if os.path.isdir(path):
            return path
    available = ", ".join(checkpoint_dirs(output_dir)) or "none"
    raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint (not a folder, nor a name inside "
                            f"--output_dir {output_dir}; checkpoints there: {available})")


def register_unet_hooks(accelerator, model, flat, ema):
    """accelerate save/load hooks, as train_unconditional.py registers them: ``save_state`` writes ``unet/`` (the
    training weights) and ``unet_ema/`` (the EMA weights and state) as UNet2DModel folders instead of accelerate's
    own model file, and ``load_state`` reads them back into ``model``'s flat buffer ``flat`` and the EMA."""
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel

    from .flat_parameters import module_with_weights

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            model.save_pretrained(os.path.join(output_dir, "unet"))
            if ema is not None:
                ema_unet = module_with_weights(model, ema.shadow_params[0])
                state = ema.state_dict()
                ema_unet.register_to_config(**{k: state[k] for k in EMA_STATE_KEYS})
                ema_unet.save_pretrained(os.path.join(output_dir, "unet_ema"))
        while weights:  # the weights are saved above; accelerate must not save them again
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            models.pop()
        folder = os.path.join(input_dir, "unet")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"{input_dir} has no unet/ folder: not a checkpoint of this ddpm-hf version")
        loaded = UNet2DModel.from_pretrained(folder)
        model.load_state_dict(loaded.state_dict())  # copies into the views of the flat buffer
        if ema is not None:
            # as train_unconditional.py reads it, then laid out as one flat shadow buffer like ``flat``
            loaded_ema = EMAModel.from_pretrained(os.path.join(input_dir, "unet_ema"), UNet2DModel)
            state = loaded_ema.state_dict()
            state["shadow_params"] = [torch.cat([p.detach().reshape(-1) for p in state["shadow_params"]]).to(flat.device)]
            ema.load_state_dict(state)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator, output_dir, step, state, total_limit):
    """``accelerator.save_state`` (weights through ``register_unet_hooks``, optimizer, LR schedule, RNG) plus our
    counters into ``checkpoint-{step}.tmp``; after every rank has written its part, the main process renames it to
    ``checkpoint-{step}`` and keeps the newest ``total_limit`` checkpoints. Checkpoints of later steps (left by a run
    that was resumed from an earlier checkpoint) are deleted, so ``latest`` is always this run's newest."""
    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are in tmp before it is published
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "training_state.json"), "w") as f:
            json.dump(state, f)
        # checkpoints past this step belong to an abandoned run (resumed from an earlier one): `latest` must not
        # pick them, so they go before this one is published
        for name in checkpoint_dirs(output_dir):
            if checkpoint_step(name) >= step:
                shutil.rmtree(os.path.join(output_dir, name))
        os.replace(tmp, final)
        # the oldest go, among those up to this step; the one just written always stays
        kept = checkpoint_dirs(output_dir)
        for name in kept[:max(len(kept) - total_limit, 0)]:
            if name != os.path.basename(final):
                shutil.rmtree(os.path.join(output_dir, name))
    accelerator.wait_for_everyone()


def read_training_state(checkpoint):
    with open(os.path.join(checkpoint, "training_state.json")) as f:
        return json.load(f)


def read_history(path, last_step):
    """The records of history.jsonl up to ``last_step`` (a resumed run drops what came after its checkpoint)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r["step"] <= last_step]

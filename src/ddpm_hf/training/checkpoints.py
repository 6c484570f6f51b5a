"""Checkpoints in train_unconditional.py's format: ``checkpoint-N/`` written by ``accelerator.save_state`` with
``unet/`` and ``unet_ema/`` as diffusers ``UNet2DModel`` folders (safetensors; ``unet_ema``'s config also holds the
EMA's state, as ``EMAModel.save_pretrained`` writes it), plus the optimizer, LR schedule and RNG states accelerate
saves, and ``training_state.json`` with our counters (step, images seen, elapsed seconds).

A checkpoint is written to ``checkpoint-N.tmp`` and renamed by the main process only after every rank has finished
writing, so ``latest`` never picks a half-written one; a write that fails (disk full) removes the ``.tmp`` folder and
stops the run with a ``RunError`` naming the file. Before a resume, ``verify_checkpoint`` opens every file the
checkpoint must hold, so a truncated or missing file stops the run instead of being skipped (accelerate, for one,
carries on without a random-state file it cannot read). Folder names and ``latest`` are ddpm_hf.run_dir's.
"""

import errno
import json
import os
import shutil

import torch

from ..errors import RunError
from ..run_dir import CHECKPOINT_PREFIX, TRAINING_STATE, checkpoint_dirs, checkpoint_step, read_training_state

DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


EMA_STATE_KEYS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma",
                  "power")


def _newest_file(folder):
    """The most recently modified file under ``folder`` (the one a failed write was writing), or ``folder``."""
    newest, path = -1.0, folder
    for root, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            try:
                mtime = os.stat(full).st_mtime_ns
            except OSError:
                continue
            if mtime >= newest:
                newest, path = mtime, full
    return path


def _explain_write_error(error):
    """The cause of a failed write as one phrase: disk full (ENOSPC, a quota, a file-size limit) or the error."""
    codes = [getattr(e, "errno", None) for e in (error, error.__cause__, error.__context__) if e is not None]
    text = str(error)
    if any(code in DISK_ERRNOS for code in codes) or any(
            hint in text for hint in ("No space left", "too large", "Quota", "write failed", "FileTooLarge",
                                      "StorageFull")):
        return f"the disk is full or a size limit was reached ({type(error).__name__}: {text.strip()[:300]})"
    return f"{type(error).__name__}: {text.strip()[:300]}"


def write_error(what, folder, error, output_dir, resume_hint=True):
    """The RunError of a failed write into ``folder``: the file, the cause, the checkpoint ``latest`` still picks."""
    names = checkpoint_dirs(output_dir)
    latest = os.path.join(output_dir, names[-1]) if names else None
    template = "could not write {what}: {file}: {cause}."
    if resume_hint:
        template += (" The last complete checkpoint is {latest}; free some space and run the same command with "
                     "{resume_from_checkpoint} latest." if latest else
                     " No checkpoint was written yet; free some space and run the command again.")
    return RunError(template, what=what, file=_newest_file(folder), cause=_explain_write_error(error),
                    **({"latest": latest} if latest and resume_hint else {}))


def verify_checkpoint(path, world, use_ema, fp16=False):
    """Open every file a resume from ``path`` will read (weights, optimizer, LR schedule, every rank's random state,
    our counters) and raise RunError naming the first one that is missing or unreadable. accelerate's
    ``load_state`` would skip an unreadable random-state file silently and resume with other random numbers."""
    from accelerate.utils import load
    from safetensors import safe_open

    def fail(name, why):
        raise RunError("checkpoint {path} is damaged: {file} {why}. Resume from another checkpoint "
                       "({resume_from_checkpoint} checkpoint-N; {path}'s folder holds: {held}) or delete this one.",
                       path=path, file=os.path.join(path, name), why=why,
                       held=", ".join(checkpoint_dirs(os.path.dirname(os.path.abspath(path)))) or "none")

    weights = ["unet"] + (["unet_ema"] if use_ema else [])
    expected = [os.path.join(w, f) for w in weights for f in ("config.json", "diffusion_pytorch_model.safetensors")]
    expected += ["optimizer.bin", "scheduler.bin", TRAINING_STATE]
    expected += [f"random_states_{r}.pkl" for r in range(world)] + (["scaler.pt"] if fp16 else [])
    if not any(os.path.exists(os.path.join(path, name)) for name in expected):
        raise RunError("{resume_from_checkpoint} {path} is not a checkpoint (none of unet/, optimizer.bin, "
                       "training_state.json in it): give checkpoint-N of a run's {output_dir}, or latest", path=path)
    for name in expected:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            if name.startswith("random_states_"):
                fail(name, f"is missing (was the checkpoint written by fewer than {world} processes?)")
            fail(name, "is missing")
        try:
            if name.endswith(".json"):
                with open(full) as f:
                    json.load(f)
            elif name.endswith(".safetensors"):
                with safe_open(full, framework="pt") as f:  # reads every tensor: a truncated file fails here
                    for key in f.keys():
                        f.get_tensor(key)
            else:  # torch pickles, read as accelerate reads them (weights_only, numpy arrays allowed)
                state = load(full, map_location="cpu")
                if name.startswith("random_states_") and not {"random_state", "numpy_random_seed",
                                                              "torch_manual_seed"} <= set(state):
                    fail(name, "holds no random states")
        except RunError:
            raise
        except Exception as error:  # noqa: BLE001 - any reason the file cannot be read is reported the same way
            fail(name, f"cannot be read ({type(error).__name__}: {str(error).strip().splitlines()[0][:200]})")
    state = read_training_state(path)
    name = os.path.basename(os.path.normpath(path))
    if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit() and \
            state.get("step") != checkpoint_step(name):
        fail(TRAINING_STATE, f"says step {state.get('step')}, not {checkpoint_step(name)}")


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


def any_rank(accelerator, flags):
    """Element-wise OR of a list of booleans over all processes (one all-reduce; no communication on one process)."""
    if accelerator.num_processes == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([float(bool(f)) for f in flags], device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def save_checkpoint(accelerator, output_dir, step, state, total_limit):
    """``accelerator.save_state`` (weights through ``register_unet_hooks``, optimizer, LR schedule, RNG) plus our
    counters into ``checkpoint-{step}.tmp``; after every rank has written its part, the main process renames it to
    ``checkpoint-{step}`` and keeps the newest ``total_limit`` checkpoints. Checkpoints of later steps (left by a run
    that was resumed from an earlier checkpoint) are deleted, so ``latest`` is always this run's newest. If any rank
    fails to write (disk full), the ``.tmp`` folder is removed and every rank raises RunError naming the file; the
    earlier checkpoints are untouched."""
    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(tmp)
        if accelerator.is_main_process:
            with open(os.path.join(tmp, TRAINING_STATE), "w") as f:
                json.dump(state, f)
    except Exception as e:  # noqa: BLE001 - reported below with the file it was writing
        error = e
    # every rank's files (RNG states, shards) are in tmp before it is published; this all-reduce is the barrier
    if any_rank(accelerator, [error is not None])[0]:
        failure = (write_error(f"checkpoint-{step}", tmp, error, output_dir) if error is not None else
                   RunError("another process could not write checkpoint-{step} (see its error)", step=step))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise failure from error
    if accelerator.is_main_process:
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

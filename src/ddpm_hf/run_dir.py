"""The layout of a training run's output folder, in one place: the file names, the lock that keeps two runs out of
one folder, atomic writes, the checkpoints (``checkpoint-N``, ``latest``), the records (``history.jsonl``) and the one
writer of ``metrics.json``.

A run's folder is the saved pipeline (model_index.json, unet/, scheduler/, the pipeline source, README.md, images/),
as diffusers' train_unconditional.py leaves it, with these beside it::

    training_args.json  the resolved settings          metrics.json   headline numbers (training, evaluation)
    history.jsonl       one record per optimizer step  checkpoint-N/  accelerate states, oldest first
    .ddpm-hf.lock       the live run's host and pid    logs/ samples/ loss.png
"""

import json
import os
import shutil
import socket
import tempfile
import time

from .errors import CheckpointNotFound, LayoutError, OutputDirError

METRICS = "metrics.json"
TRAINING_ARGS = "training_args.json"
HISTORY = "history.jsonl"
MODEL_INDEX = "model_index.json"
LOCK_NAME = ".ddpm-hf.lock"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE = "training_state.json"
PIPELINE_TMP = ".pipeline.tmp"
MODEL_CARD = "README.md"
LEGACY_PIPELINE = "pipeline"  # where ddpm-hf before the train_unconditional.py layout saved the pipeline


# --------------------------------------------------------------------------------------------- atomic JSON files
def write_json_atomic(path, data):
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``: a reader
    sees the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_metrics(output_dir):
    """The run's metrics.json as a dict ({} when the file is missing)."""
    path = os.path.join(output_dir, METRICS)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_metrics(output_dir, metrics):
    """Replace ``output_dir/metrics.json`` with ``metrics`` (a training run's end: scores of earlier weights go),
    atomically."""
    write_json_atomic(os.path.join(output_dir, METRICS), metrics)
    return metrics


def update_metrics(output_dir, updates):
    """Merge ``updates`` into ``output_dir/metrics.json`` and return the merged dict: a top-level key whose old and
    new values are both dicts is merged one level deep (dict.update), any other key is replaced. Written atomically
    (a temporary file, then os.replace)."""
    metrics = read_metrics(output_dir)
    for key, value in updates.items():
        if isinstance(metrics.get(key), dict) and isinstance(value, dict):
            metrics[key] = {**metrics[key], **value}
        else:
            metrics[key] = value
    write_json_atomic(os.path.join(output_dir, METRICS), metrics)
    return metrics


# ------------------------------------------------------------------------------------------- what a folder holds
def check_run(output_dir):
    """Raise LayoutError unless ``output_dir`` is a finished training run with the pipeline at its root; a run of an
    older ddpm-hf (pipeline in ``output_dir/pipeline``) gets a message that says so."""
    legacy = os.path.join(output_dir, LEGACY_PIPELINE)
    if not os.path.isfile(os.path.join(output_dir, MODEL_INDEX)) and os.path.isfile(os.path.join(legacy, MODEL_INDEX)):
        raise LayoutError(
            f"{output_dir} is a run of an older ddpm-hf that saved its pipeline in {legacy}; this version keeps the "
            f"pipeline at the run's top level, as diffusers' train_unconditional.py does. `ddpm-hf sample {legacy}` "
            f"still loads it; to card or push it, move the contents of {LEGACY_PIPELINE}/ up into {output_dir}")
    for name in (TRAINING_ARGS, METRICS, MODEL_INDEX):
        if not os.path.isfile(os.path.join(output_dir, name)):
            raise LayoutError(f"{output_dir} is not a finished training run: {name} is missing")


def run_files(output_dir):
    """The files and folders in ``output_dir`` that show it holds a training run or its pipeline (any version)."""
    if not os.path.isdir(output_dir):
        return []
    marks = (TRAINING_ARGS, MODEL_INDEX, HISTORY, METRICS)
    return sorted(n for n in os.listdir(output_dir) if n in marks or n.startswith(CHECKPOINT_PREFIX))


def check_output_dir(output_dir):
    """Raise OutputDirError when ``output_dir`` exists and is not a folder (a file, or a link to one)."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise OutputDirError("{output_dir} {path} is a file, not a folder: choose another {output_dir} (or move "
                             "the file away)", path=output_dir)


def clear_output_dir(output_dir, keep=()):
    """Delete everything in ``output_dir`` but the lock and the names in ``keep`` (--overwrite_output_dir, once the
    data is known to load)."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name != LOCK_NAME and name not in keep:
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def remove_stale_tmp(output_dir):
    """Delete the ``checkpoint-N.tmp`` and ``.pipeline.tmp`` folders a run killed while writing left (main process,
    lock held)."""
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if (name.startswith(CHECKPOINT_PREFIX) and name.endswith(".tmp")) or name == PIPELINE_TMP:
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


# -------------------------------------------------------------------------------------------------- checkpoints
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


def latest_checkpoint(output_dir):
    """The path of the newest complete checkpoint in ``output_dir``, or None."""
    names = checkpoint_dirs(output_dir)
    return os.path.join(output_dir, names[-1]) if names else None


def resolve_checkpoint(value, output_dir):
    """The checkpoint folder ``--resume_from_checkpoint value`` names: "latest" (the newest in ``output_dir``, or
    None when there is none), a ``checkpoint-N`` name inside ``output_dir`` (as diffusers' script takes it), or a path.
    Raises CheckpointNotFound (a FileNotFoundError) for a name or path that does not exist."""
    if value == "latest":
        return latest_checkpoint(output_dir)
    for path in (os.path.join(output_dir, value), value):
        if os.path.isdir(path):
            return path
    available = ", ".join(checkpoint_dirs(output_dir)) or "none"
    raise CheckpointNotFound("{resume_from_checkpoint} {value}: no such checkpoint (not a folder, nor a name "
                             "inside {output_dir} {folder}; checkpoints there: {available})", value=value,
                             folder=output_dir, available=available)


def read_training_state(checkpoint):
    """The counters a checkpoint holds: {"step", "images_seen", "elapsed"}."""
    with open(os.path.join(checkpoint, TRAINING_STATE)) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------------ records
def read_history(output_dir, last_step):
    """The records of history.jsonl up to ``last_step`` (a resumed run drops what came after its checkpoint)."""
    path = os.path.join(output_dir, HISTORY)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r["step"] <= last_step]


class History:
    """history.jsonl: rewritten at start with the records kept (a resume keeps those up to its checkpoint), then
    one JSON line appended per optimizer step as it comes (main process only)."""

    def __init__(self, output_dir, records, write):
        self.path, self.records, self.write = os.path.join(output_dir, HISTORY), list(records), write
        if write:
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)

    def append(self, record):
        self.records.append(record)
        if self.write:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------------------- lock
class OutputLock:
    """``output_dir/.ddpm-hf.lock`` holding the owner's host and pid, created atomically (O_EXCL) by the main
    process. A second run on the same folder refuses with OutputDirError; a lock whose process is gone (on this host)
    is stale and taken over."""

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.held = False

    def acquire(self):
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None or self._alive(owner):
                    who = f"pid {owner['pid']} on {owner['host']}" if owner else "a run that is starting"
                    raise OutputDirError("{output_dir} {folder} is in use by another training run ({who}; lock file "
                                         "{lock}). Wait for it to finish, or choose another {output_dir}; if that "
                                         "process is gone (e.g. on another machine), delete the lock file.",
                                         folder=os.path.dirname(self.path), who=who, lock=self.path) from None
                try:  # stale: its process is gone
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise OutputDirError("could not take the lock {lock}; delete it if no run uses {output_dir}",
                             lock=self.path)

    def _owner(self):
        try:
            with open(self.path) as f:
                owner = json.load(f)
            return {"host": str(owner["host"]), "pid": int(owner["pid"])}
        except (OSError, ValueError, KeyError, TypeError):
            try:  # being written right now (held), or garbage left long ago (stale)
                if time.time() - os.path.getmtime(self.path) > 10:
                    return {"host": socket.gethostname(), "pid": -1}
            except OSError:
                pass
            return None

    @staticmethod
    def _alive(owner):
        if owner["pid"] < 0:
            return False
        if owner["host"] != socket.gethostname():
            return True  # cannot tell from here
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

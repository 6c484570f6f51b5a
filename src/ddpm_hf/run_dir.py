"""The files of a training run's output folder; here only the one writer of ``metrics.json``."""

import json
import os
import tempfile

METRICS = "metrics.json"


def read_metrics(output_dir):
    """The run's metrics.json as a dict ({} when there is none)."""
    path = os.path.join(output_dir, METRICS)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def update_metrics(output_dir, updates):
    """Merge ``updates`` into ``output_dir/metrics.json`` and return the merged dict: a top-level key whose old and
    new values are both dicts is merged one level deep (dict.update), any other key is replaced. Written atomically
    (a temporary file beside it, then os.replace), so a reader never sees half a file."""
    metrics = read_metrics(output_dir)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(metrics.get(key), dict):
            metrics[key] = {**metrics[key], **value}
        else:
            metrics[key] = value
    fd, tmp = tempfile.mkstemp(prefix=f".{METRICS}.", suffix=".tmp", dir=output_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(metrics, f, indent=2)
        os.replace(tmp, os.path.join(output_dir, METRICS))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return metrics

"""The pictures of an evaluation: the bound per timestep, the sample metrics against the number of sampling steps or
UNet calls, a grid of samples."""

import numpy as np


def plot_curve(curve, path, title):
    """The bound's term L_{t-1} per timestep t (``curve``: {"t": [...], "bits_per_dim": [...]}), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(curve["t"], curve["bits_per_dim"], marker="." if len(curve["t"]) < 200 else None)
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("term L_{t-1} (bits/dim)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_steps(runs, path, title):
    """Each sample metric against the number of sampling steps (one panel per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for run in runs for name in run["scores"]})
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.2 * (len(names) + 1), 3), dpi=120, squeeze=False)
    steps = [run["num_inference_steps"] for run in runs]
    for ax, name in zip(axes[0], names):
        ax.plot(steps, [run["scores"][name]["value"] for run in runs], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_title(name, fontsize=9)
    ax = axes[0][-1]
    ax.plot(steps, [run["sampling_seconds"] for run in runs], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_title("sampling seconds", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_quality_against_calls(lines, path, title, ylabel, floor=None, xlabel="UNet calls per image", xscale="log"):
    """A sample metric against UNet calls per image (log scale; or another ``xlabel`` on ``xscale``), one line per
    sampler (``lines``: {sampler: [(calls, score), ...]}), with the real-data floor (mean, std over real subsets) as a
    band if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for sampler, points in lines.items():
        calls, scores = zip(*points)
        ax.plot(calls, scores, marker="o", label="ddpm (ancestral)" if sampler == "ddpm" else sampler)
    if floor is not None:
        ax.axhline(floor[0], color="grey", linestyle="--", label="real digits (floor)")
        ax.axhspan(floor[0] - floor[1], floor[0] + floor[1], color="grey", alpha=0.2)
    ax.set_xscale(xscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_grid(samples_uint8, path, title):
    """A labelled grid of uint8 samples (N, C, H, W)."""
    from ..images import make_grid

    make_grid(samples_uint8.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0, title=title).save(path)

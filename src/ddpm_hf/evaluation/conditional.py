"""Evaluating a class-conditional model of the embedded digits (8x8) or MNIST (28x28) over classifier-free guidance
scales (issue 18 sec. 3, issue 29): per-class samples, the dataset's classifier's agreement with the requested label,
the dataset's offline metric (``digits`` or ``mnist``) with its real-data floor, as a table and a plot of the
accuracy/quality trade-off. Row keys carry the metric's prefix ("digits_fd" or "mnist_fd"; "metric" names it).

Guidance follows the pipeline (Ho & Salimans 2022 eq. 6 with w = s - 1, diffusers' convention): s = 0 is the
unconditional (null-class) model, s = 1 the conditional model alone, s > 1 guided. At every scale the same seeds
draw the same initial noise (image i: seed + i), so the scales are compared on paired samples.

Accuracy. Image i, sampled for class c_i, is "recognised" when the metric's classifier (``digits.DigitsCNN`` or
``mnist.MnistCNN``) gives c_i its highest probability. Its standard error is the binomial sqrt(p (1 - p) / N).
The classifier is not perfect: its accuracy on the held-out real digits (``classifier_test_accuracy``, beside every
score: 180 digits, 500 MNIST digits) is what real digits of the right class reach, the ceiling to read the samples'
accuracy against.
At s = 0 the label does not reach the network, so the accuracy is the share of samples that happen to be of the
requested class, about 10% for ten balanced classes.

Quality. The dataset's metric (``digits.digits_metric`` against all 1,797 digits, ``mnist.mnist_metric`` against
the 500 held-out MNIST digits) of all the samples of one scale together, with its real-data floor at the same sample
count (computed once per sweep: it depends on N only).

The hook into ``ddpm-hf evaluate`` is ``conditional_report`` (a function of a loaded pipeline and its output
folder); ``benchmarks/class_conditional.py`` runs it over several trained seeds against an unconditional model.
"""

import json
import os
import time

import numpy as np

from ..errors import BadArgument

DEFAULT_GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0)  # issue 18 sec. 3; diffusers' convention, 0 = unconditional
TARGET_ACCURACY = {"digits": 0.95, "mnist": 0.98}  # the goals: the requested digit recognised (issues 18 and 29)
METRICS = ("digits", "mnist")


def offline_metric(metric):
    """The classifier and the scoring function of the offline metric ``metric`` ("digits" or "mnist"):
    (classifier, score(samples_uint8, classifier, floor_draws) -> that metric's dict, keys prefixed by ``metric``)."""
    if metric == "digits":
        from .digits import digits_metric, load_digits_classifier

        return load_digits_classifier(), lambda x, c, d: digits_metric(x, classifier=c, floor_draws=d)
    if metric == "mnist":
        from .mnist import load_mnist_classifier, mnist_metric

        return load_mnist_classifier(), lambda x, c, d: mnist_metric(x, classifier=c, floor_draws=d)
    raise BadArgument("metric", f"the guidance sweep scores with one of {', '.join(METRICS)}, got {metric!r}")


def requested_digits(pipe, class_ids):
    """The digit (0..9) each class id asks for, from the pipeline's ``id2label`` (the embedded digits and MNIST name
    their classes "0".."9"). ``class_ids``: ints. Returns an (N,) int array; BadArgument("model") for a class whose
    name is not a digit (a model of other data: a digit classifier cannot judge it)."""
    names = {int(k): str(v) for k, v in (getattr(pipe.config, "id2label", None) or {}).items()}
    digits = []
    for i in class_ids:
        name = names.get(int(i), str(int(i))).strip()
        if not (name.isdigit() and 0 <= int(name) <= 9):
            raise BadArgument("model", f"class {i} is named {name!r}: the class-accuracy evaluation needs a model of "
                              "the embedded digits, whose classes are named 0..9")
        digits.append(int(name))
    return np.asarray(digits, dtype=np.int64)


def label_agreement(images_uint8, requested, classifier=None):
    """How often a digit classifier recognises the requested digit.

    Args:
        images_uint8: (N, 1, H, W) uint8 digits in 0..255, of the classifier's shape (8x8 digits, 28x28 MNIST).
        requested: (N,) ints in 0..9, the digit each image was asked to be.
        classifier: the metric's ``classifier_metric.Classifier`` (default: the digits one).
    Returns:
        {"accuracy": share of images whose argmax class is the requested digit (0..1), "accuracy_stderr": binomial
        sqrt(p (1 - p) / N), "per_class_accuracy": {digit: accuracy over the images asking for it},
        "confusion": (10, 10) counts as nested lists, row = requested, column = recognised,
        "classifier_test_accuracy": the classifier's accuracy on its held-out real digits, "num_samples": N}.
    """
    from .digits import load_digits_classifier

    classifier = classifier or load_digits_classifier()
    requested = np.asarray(requested, dtype=np.int64)
    if len(requested) != len(images_uint8):
        raise BadArgument("requested", f"{len(requested)} requested labels for {len(images_uint8)} images")
    if len(requested) == 0:
        raise BadArgument("requested", "no images to score")
    if requested.min() < 0 or requested.max() > 9:
        raise BadArgument("requested", f"requested digits must be in 0..9, got {requested.min()}..{requested.max()}")
    recognised = classifier.probabilities(images_uint8).argmax(axis=1)
    hit = recognised == requested
    p = float(hit.mean())
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (requested, recognised), 1)
    return {"accuracy": p, "accuracy_stderr": float(np.sqrt(p * (1 - p) / len(hit))),
            "per_class_accuracy": {int(d): float(hit[requested == d].mean()) for d in np.unique(requested)},
            "confusion": confusion.tolist(), "classifier_test_accuracy": classifier.test_accuracy,
            "num_samples": int(len(hit))}


def class_samples(pipe, per_class, guidance_scale, num_inference_steps=None, batch_size=500, seed=0):
    """``per_class`` samples of every class of a conditional pipeline (class-major: all of class 0, then 1, ...),
    image i drawn with the generator seeded seed + i (``sampling.generate``).

    Returns (uint8 tensor (K * per_class, C, H, W) in 0..255, (K * per_class,) class ids array, row titles (one
    per class), sampling seconds). BadArgument("model") for an unconditional pipeline."""
    import torch

    from ..images import to_uint8
    from ..sampling import class_rows, generate

    if getattr(pipe.unet.config, "num_class_embeds", None) is None:
        raise BadArgument("model", "this model is unconditional (its UNet has no num_class_embeds): the guidance sweep "
                          "needs a model trained with class_conditional")
    ids, titles = class_rows(pipe, None, per_class)
    start = time.time()
    images, _ = generate(pipe, len(ids), batch_size, num_inference_steps, seed, class_labels=ids,
                         guidance_scale=float(guidance_scale))
    seconds = time.time() - start
    uint8 = torch.from_numpy(to_uint8(images).transpose(0, 3, 1, 2).copy())
    return uint8, np.asarray(ids, dtype=np.int64), titles, seconds


def guidance_sweep(pipe, guidance_scales=DEFAULT_GUIDANCE_SCALES, per_class=100, num_inference_steps=None,
                   batch_size=500, seed=0, classifier=None, floor_draws=20, grid_dir=None, grid_per_class=10,
                   name="model", log=None, metric="digits"):
    """The accuracy and quality of a conditional digits or MNIST pipeline at each guidance scale (module docstring).

    Args:
        pipe: a class-conditional ``DDPMHFPipeline`` of the embedded digits or MNIST (its sampler as it should be
            scored).
        guidance_scales: the scales s (diffusers' convention). per_class: samples per class (N = K * per_class).
        num_inference_steps: sampling steps (None: T). batch_size: images per pipeline call. seed: image i uses
            seed + i at every scale.
        classifier: the metric's classifier (default: the shipped one). floor_draws: real-data floor draws.
        grid_dir: if given, a labelled grid (one row of ``grid_per_class`` per class) per scale is written there as
            ``<name>-s<scale>.png``.
        metric: "digits" (8x8 models) or "mnist" (28x28): the classifier and metric that score the samples.
    Returns:
        one row per scale, P the metric's prefix ("digits" or "mnist"): {"guidance_scale", "metric", "seed",
        "num_samples", "num_inference_steps", "accuracy", "accuracy_stderr", "per_class_accuracy", "confusion",
        "classifier_test_accuracy", "P_fd", "P_fd_floor", "P_fd_floor_std", "P_fd_over_floor", "P_kid",
        "P_kid_std", "P_confidence", "P_class_balance", "sampling_seconds"}.
    """
    shipped, score = offline_metric(metric)
    classifier = classifier or shipped
    steps = num_inference_steps or pipe.scheduler.config.num_train_timesteps
    fd = f"{metric}_fd"
    rows, floor = [], None
    for scale in guidance_scales:
        samples, ids, titles, seconds = class_samples(pipe, per_class, scale, steps, batch_size, seed)
        agreement = label_agreement(samples, requested_digits(pipe, ids), classifier)
        quality = score(samples, classifier, 0 if floor else floor_draws)
        if floor is None and floor_draws:
            floor = {k: quality[k] for k in (f"{fd}_floor", f"{fd}_floor_std")}
        row = {"guidance_scale": float(scale), "metric": metric, "seed": seed, "num_samples": len(ids),
               "num_inference_steps": steps, **agreement, fd: quality[fd], **(floor or {}),
               **{f"{metric}_{k}": quality[f"{metric}_{k}"] for k in ("kid", "kid_std", "confidence",
                                                                        "class_balance")},
               "sampling_seconds": round(seconds, 2)}
        if floor:
            row[f"{fd}_over_floor"] = row[fd] / floor[f"{fd}_floor"]
        rows.append(row)
        if grid_dir:
            os.makedirs(grid_dir, exist_ok=True)
            pick = np.concatenate([np.flatnonzero(ids == i)[:grid_per_class] for i in np.unique(ids)])
            grid = _class_grid(samples[pick], titles, f"{name}: guidance scale {scale:g}, {steps} steps, seed {seed}; "
                               f"accuracy {row['accuracy']:.1%}")
            grid.save(os.path.join(grid_dir, f"{name}-s{scale:g}.png"))
        if log:
            shown = f" (floor {floor[fd + '_floor']:.4g} +- {floor[fd + '_floor_std']:.2g})" if floor else ""
            log(f"  s = {scale:g}: accuracy {row['accuracy']:.1%} +- {row['accuracy_stderr']:.1%}, {metric} FD "
                f"{row[fd]:.4g}{shown}, {seconds:.0f} s sampling")
    return rows


def _class_grid(samples_uint8, titles, title):
    """A labelled, upscaled grid of uint8 samples (N, C, H, W), one row per class (``titles``)."""
    from ..images import make_grid

    images = samples_uint8.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0
    return make_grid(images, nrow=len(images) // len(titles), title=title, row_labels=titles)


def summarize(rows):
    """Rows of several seeds (``guidance_sweep``'s, concatenated; one metric) grouped by guidance scale: one dict per
    scale, sorted, with "metric", and for the accuracy and the metric's FD, FD over floor, KID and confidence the
    "mean", "std" (ddof 1; 0 for one seed), "min", "max" and "values" over the seeds, the floor (identical for every
    seed at one N) and "seeds"."""
    metric = rows[0].get("metric", "digits") if rows else "digits"
    keys = ("accuracy",) + tuple(f"{metric}_{k}" for k in ("fd", "fd_over_floor", "kid", "confidence"))
    scales = sorted({r["guidance_scale"] for r in rows})
    out = []
    for s in scales:
        group = [r for r in rows if r["guidance_scale"] == s]
        entry = {"guidance_scale": s, "metric": metric, "seeds": [r["seed"] for r in group],
                 "num_samples": group[0]["num_samples"]}
        for k in keys:
            values = [r[k] for r in group if k in r]
            if values:
                entry[k] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                            else 0.0, "min": float(np.min(values)), "max": float(np.max(values)), "values": values}
        for k in (f"{metric}_fd_floor", f"{metric}_fd_floor_std", "classifier_test_accuracy"):
            if k in group[0]:
                entry[k] = group[0][k]
        out.append(entry)
    return out


def choose_guidance(summary, baseline_fd=None, target=None):
    """The guidance scale to ship, from ``summarize``'s output: among the scales where every seed's accuracy is at
    least ``target`` (default: the metric's goal, TARGET_ACCURACY) and (given ``baseline_fd``, the unconditional
    model's FD in the same metric) the mean FD is no worse than it, the one with the lowest mean FD. None when no
    scale qualifies."""
    if not summary:
        return None
    metric = summary[0]["metric"]
    target = TARGET_ACCURACY[metric] if target is None else target
    fd = f"{metric}_fd"
    ok = [e for e in summary if e["accuracy"]["min"] >= target
          and (baseline_fd is None or e[fd]["mean"] <= baseline_fd)]
    return min(ok, key=lambda e: e[fd]["mean"])["guidance_scale"] if ok else None


def sweep_table(summary, baseline=None):
    """A markdown table of ``summarize``'s output: one line per guidance scale with the accuracy and the metric's FD
    (mean +- std over seeds, and the per-seed values), the FD over the real-data floor; ``baseline`` (a dict with
    "name", "fd", optional "fd_std" and "values") adds a last line for an unconditional model."""
    metric = summary[0]["metric"] if summary else "digits"
    fd = f"{metric}_fd"
    seeds = len(summary[0]["seeds"]) if summary else 0
    lines = [f"| guidance s | class accuracy (mean +- std over {seeds} seeds) | per seed | {metric} FD (mean +- std) "
             "| per seed | FD / floor |", "|---|---|---|---|---|---|"]
    for e in summary:
        a, f = e["accuracy"], e[fd]
        ratio = e.get(f"{fd}_over_floor", {}).get("mean")
        lines.append(f"| {e['guidance_scale']:g} | {a['mean']:.1%} +- {a['std']:.1%} | "
                     + " / ".join(f"{v:.1%}" for v in a["values"]) + f" | {f['mean']:.3f} +- {f['std']:.3f} | "
                     + " / ".join(f"{v:.3f}" for v in f["values"]) + " | "
                     + (f"{ratio:.2f}" if ratio is not None else "-") + " |")
    floor = summary[0].get(f"{fd}_floor") if summary else None
    if baseline:
        std = baseline.get("fd_std")
        lines.append(f"| {baseline['name']} (unconditional) | - | - | {baseline['fd']:.3f}"
                     + (f" +- {std:.3f}" if std is not None else "") + " | "
                     + " / ".join(f"{v:.3f}" for v in baseline.get("values", [baseline["fd"]])) + " | "
                     + (f"{baseline['fd'] / floor:.2f}" if floor else "-") + " |")
    if floor:
        e = summary[0]
        lines.append(f"\nreal-data floor of the {metric} FD at N = {e['num_samples']}: {floor:.3f} +- "
                     f"{e[fd + '_floor_std']:.3f}; the classifier's accuracy on its held-out real digits: "
                     f"{e.get('classifier_test_accuracy', float('nan')):.1%}")
    return "\n".join(lines)


def plot_sweep(summary, path, title, baseline=None, target=None):
    """Two labelled panels against the guidance scale: the class accuracy (mean over seeds, error bars = the seeds'
    min..max, the ``target`` line (default: the metric's goal) and the classifier's real-digit accuracy) and the
    metric's FD (same bars, the real-data floor +- its std as a band, the unconditional ``baseline`` as a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary[0]["metric"]
    fd = f"{metric}_fd"
    target = TARGET_ACCURACY[metric] if target is None else target
    reference = "all 1,797 digits" if metric == "digits" else "the 500 held-out MNIST digits"
    s = [e["guidance_scale"] for e in summary]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for ax, key, label in ((axes[0], "accuracy", "share recognised as the requested digit"),
                           (axes[1], fd, f"{metric} FD to {reference} (lower is better)")):
        mean = np.array([e[key]["mean"] for e in summary])
        low = mean - np.array([e[key]["min"] for e in summary])
        high = np.array([e[key]["max"] for e in summary]) - mean
        ax.errorbar(s, mean, yerr=[low, high], marker="o", capsize=3,
                    label=f"conditional model, {len(summary[0]['seeds'])} seed(s): mean, min..max")
        ax.set_xlabel("guidance scale s (0 = unconditional, 1 = conditional)")
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(key.replace("_", " "))
    axes[0].axhline(target, color="tab:red", linestyle="--", linewidth=1, label=f"goal {target:.0%}")
    if "classifier_test_accuracy" in summary[0]:
        axes[0].axhline(summary[0]["classifier_test_accuracy"], color="gray", linestyle=":", linewidth=1,
                        label="classifier on held-out real digits")
    if f"{fd}_floor" in summary[0]:
        f, fs = summary[0][f"{fd}_floor"], summary[0][f"{fd}_floor_std"]
        axes[1].axhspan(f - fs, f + fs, color="gray", alpha=0.3,
                        label=f"real-data floor at N = {summary[0]['num_samples']} (+- std)")
    if baseline:
        axes[1].axhline(baseline["fd"], color="tab:orange", linestyle="--", linewidth=1,
                        label=f"{baseline['name']} (unconditional)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def conditional_report(pipe, output_dir, name="guidance", guidance_scales=DEFAULT_GUIDANCE_SCALES, per_class=100,
                       num_inference_steps=None, batch_size=500, seed=0, log=print, metric="digits"):
    """The hook for ``ddpm-hf evaluate`` on a class-conditional digits or MNIST model (``metric``): ``guidance_sweep``
    of ``pipe`` at one seed, written beside the model as ``eval-<name>-guidance.json`` (rows, summary, table), the
    plot ``eval-<name>-guidance.png`` and one labelled grid per scale under ``eval-<name>-guidance/``. Returns the
    report dict (with "path")."""
    rows = guidance_sweep(pipe, guidance_scales, per_class, num_inference_steps, batch_size, seed,
                          grid_dir=os.path.join(output_dir, f"eval-{name}-guidance"), name=name, log=log,
                          metric=metric)
    summary = summarize(rows)
    table = sweep_table(summary)
    plot = os.path.join(output_dir, f"eval-{name}-guidance.png")
    plot_sweep(summary, plot, f"{name}: {rows[0]['num_samples']} samples ({per_class} per class), "
               f"{rows[0]['num_inference_steps']} steps, seed {seed}")
    report = {"name": name, "metric": metric, "scheduler": type(pipe.scheduler).__name__, "rows": rows,
              "summary": summary, "table": table, "plot": os.path.basename(plot)}
    path = os.path.join(output_dir, f"eval-{name}-guidance.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    report["path"] = path
    return report

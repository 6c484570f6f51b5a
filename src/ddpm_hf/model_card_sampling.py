"""What a model card says about sampling, from the scores ``ddpm-hf evaluate`` merged into metrics.json: the
samplers' quality against UNet calls (a plot), the recommended sampler (the fewest calls within 10% of the best
score) and, for a class-conditional model, the guidance sweep's table with the pipeline's default scale."""

# the picture of the sample scores against UNet calls, drawn from metrics.json by write_model_card
SAMPLER_PLOT = "images/sampler_quality.png"
SAMPLE_METRIC_NAMES = {"fid": "FID (lower is better)", "kid": "KID (lower is better)",
                       "precision": "precision (k=3, higher is better)", "recall": "recall (k=3, higher is better)",
                       "digits_fd": "digits classifier Frechet distance (lower is better)",
                       "mnist_fd": "MNIST classifier Frechet distance (lower is better)"}


def sampling_text(entry):
    """"N steps" of the model's ancestral chain, "N steps of NAME" for another sampler (``ddpm_hf.sampling``)."""
    sampler = entry.get("sampler", "ddpm")
    return f"{entry['num_inference_steps']} steps" + ("" if sampler == "ddpm" else f" of {sampler}")


def comparable_scores(metrics, minimum=2):
    """The sample scores ``ddpm-hf evaluate`` merged into metrics.json (``sample_metrics``) that can be compared with
    each other: those of the digits metric if it has ``minimum`` or more, else of the MNIST metric, else of FID, at
    the largest sample count measured.
    (metric name, [entries]), or (None, []) with fewer than ``minimum`` scores of one metric."""
    entries = metrics.get("sample_metrics", [])
    for metric in ("digits_fd", "mnist_fd", "fid"):
        scored = [e for e in entries if e["metric"] == metric]
        n = max((e["num_samples"] for e in scored), default=0)
        scored = [e for e in scored if e["num_samples"] == n]
        if len(scored) >= minimum:
            return metric, scored
    return None, []


def recommended_sampler(metrics, tolerance=0.10):
    """Of the samplers ``ddpm-hf evaluate`` scored (``comparable_scores``), the one with the fewest UNet calls whose
    score is within ``tolerance`` of the best: {"entry", "best", "metric", "tolerance"}, or None with fewer than two
    comparable scores."""
    from .sampling import unet_calls

    metric, scored = comparable_scores(metrics)
    if not scored:
        return None
    best = min(scored, key=lambda e: e["value"])
    near = [e for e in scored if e["value"] <= (1 + tolerance) * best["value"]]
    pick = min(near, key=lambda e: (unet_calls(e.get("sampler", "ddpm"), e["num_inference_steps"]), e["value"]))
    return {"entry": pick, "best": best, "metric": metric, "tolerance": tolerance}


def plot_sampler_scores(metrics, path):
    """Draw the comparable sample scores (``comparable_scores``; metrics.json keeps one per sampler and step count)
    against UNet calls per image, one line per sampler, with the real-data floor if measured, to ``path`` (a PNG).
    Returns what was drawn, {sampler: [(calls, score), ...]}, or None (drawing nothing) with fewer than two scores."""
    from .evaluation.plots import plot_quality_against_calls
    from .sampling import unet_calls

    metric, scored = comparable_scores(metrics)
    if not scored:
        return None
    lines = {}
    for e in sorted(scored, key=lambda e: (e.get("sampler", "ddpm"), e["num_inference_steps"])):
        sampler = e.get("sampler", "ddpm")
        lines.setdefault(sampler, []).append((unet_calls(sampler, e["num_inference_steps"]), e["value"]))
    floors = [(e["floor"], e.get("floor_std") or 0.0) for e in scored if e.get("floor") is not None]
    name = SAMPLE_METRIC_NAMES.get(metric, metric)
    plot_quality_against_calls(lines, path, f"{name}, {scored[0]['num_samples']:,} samples per score",
                               ylabel=name.split(" (")[0], floor=floors[0] if floors else None)
    return lines


def recommended_usage(metrics, default_steps):
    """What the card's "How to use" code samples with: {"class": the diffusers scheduler class to swap in (None for
    the model's own chain), "kwargs": its from_config arguments as source text, "steps": the step count} of the
    recommended sampler (``recommended_sampler``), or of the model's own chain at ``default_steps`` when none was
    measured."""
    from .sampling import SCHEDULERS

    found = recommended_sampler(metrics)
    if found is None:
        return {"class": None, "kwargs": "", "steps": default_steps}
    sampler, steps = found["entry"].get("sampler", "ddpm"), found["entry"]["num_inference_steps"]
    if sampler == "ddpm" or sampler not in SCHEDULERS:
        return {"class": None, "kwargs": "", "steps": steps}
    name, kwargs = SCHEDULERS[sampler]
    return {"class": name, "kwargs": "".join(f", {k}={v!r}" for k, v in kwargs.items()), "steps": steps}


def recommendation_text(metrics):
    """The card's sentence on the fastest measured sampler (``recommended_sampler``), or None."""
    from .sampling import SCHEDULERS, unet_calls

    found = recommended_sampler(metrics)
    if found is None:
        return None
    pick, best = found["entry"], found["best"]
    sampler, steps = pick.get("sampler", "ddpm"), pick["num_inference_steps"]
    name = SAMPLE_METRIC_NAMES.get(found["metric"], found["metric"]).split(" (")[0]
    text = (f"**Recommended sampling**: {sampling_text(pick)} ({unet_calls(sampler, steps)} UNet calls per image), "
            f"the fewest UNet calls among the samplers measured above within {found['tolerance']:.0%} of the best "
            f"{name}: {pick['value']:.4g} against {best['value']:.4g} ({sampling_text(best)}).")
    if sampler != "ddpm" and sampler in SCHEDULERS:  # (a saved pipeline's own diffusers scheduler: no swap to show)
        text += (f" Swap it in with `pipe.scheduler = {SCHEDULERS[sampler][0]}.from_config(pipe.scheduler.config"
                 + "".join(f", {k}={v!r}" for k, v in SCHEDULERS[sampler][1].items())
                 + f")` (from diffusers) and call `pipe(..., num_inference_steps={steps})`, or `ddpm-hf sample MODEL "
                 f"--scheduler {sampler} --num_inference_steps {steps}`.")
    return text


def guidance_rows(metrics):
    """The guidance sweep ``ddpm-hf evaluate --metrics guidance`` merged into metrics.json: (intro, rows of the table
    with the pipeline's default scale in bold, the FD column's title), or (None, None, None)."""
    g = metrics.get("guidance")
    if not g:
        return None, None, None
    default = g["default_guidance_scale"]
    metric = g.get("metric", "digits")  # the sweep's offline metric: digits (8x8) or mnist (28x28)
    fd = f"{metric}_fd"
    rows = []
    for e in g["scales"]:
        mark = "**" if e["guidance_scale"] == default else ""
        floor = f" (real digits: {e[fd + '_floor']:.3g})" if e.get(fd + "_floor") else ""
        rows.append((f"{mark}{e['guidance_scale']:g}{' (default)' if mark else ''}{mark}", f"{e['accuracy']:.1%}",
                     f"{e[fd]:.3f}{floor}"))
    at_default = [e for e in g["scales"] if e["guidance_scale"] == default]
    measured = (f"; at the default, {at_default[0]['accuracy']:.1%} of the samples are recognised as the requested "
                f"class and the {metric} FD is {at_default[0][fd]:.3f}" if at_default else
                "; the default was not among the scales measured")
    intro = (f"**Classifier-free guidance** (Ho & Salimans 2022): the pipeline's default `guidance_scale` is "
             f"{default:g} (diffusers' convention: 1 = the conditional model alone, 0 = the unconditional one)"
             f"{measured}. Measured with `ddpm-hf evaluate --metrics guidance`: {g['scales'][0]['num_samples']:,} "
             f"samples per scale, one class after another, {sampling_text(g)}"
             f", seed {g['seed']}; accuracy = the {metric} classifier agrees with the requested label.")
    return intro, rows, f"{metric} FD"

"""``ddpm-hf evaluate``: score a trained model and write what was measured beside it.

For a model (a training output folder, a pipeline folder or a Hub repo id) and a list of metrics:
- ``bpd``: the variational bound on a held-out split (all T terms, or ``bpd_timesteps`` of them as a stratified
  estimate with its standard error), with a plot of the bound per timestep;
- ``fid``, ``kid``, ``prc``: N samples against a reference split in TF-Inception features (``inception.py``; the
  distances by torchmetrics, precision/recall by ``feature_metrics.py``), reference features cached per
  dataset/split/resolution;
- ``digits``: the offline digits metric (``digits_metric.py``), for models of the embedded digits.
The sample metrics are computed at every requested number of sampling steps, with the sampling time. The result goes
to ``eval-<name>.json`` (every score with its sample count, steps, seed, split and feature extractor), plots beside
it, the headline numbers into ``metrics.json`` and, on request, the model card.
"""

import datetime
import json
import os
import time

import numpy as np
import torch

SAMPLE_METRICS = ("fid", "kid", "prc", "digits")
ALL_METRICS = ("bpd",) + SAMPLE_METRICS
INCEPTION_METRICS = ("fid", "kid", "prc")


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def model_folder(model):
    """The local folder of ``model`` that holds model_index.json (a run's output folder, its old-layout ``pipeline/``
    subfolder, or a pipeline folder), or None for a Hub repo id."""
    for folder in (model, os.path.join(model, "pipeline")):
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            return folder
    if os.path.isdir(model):
        raise FileNotFoundError(f"{model} is not a saved pipeline or training run: no model_index.json in it")
    return None


def training_args_of(model, folder):
    """The training_args.json of the run (local, or downloaded from the Hub repo), or {}."""
    if folder is not None:
        for path in (os.path.join(folder, "training_args.json"), os.path.join(folder, "..", "training_args.json")):
            if os.path.isfile(path):
                return _read_json(path)
        return {}
    try:
        from huggingface_hub import hf_hub_download

        return _read_json(hf_hub_download(model, "training_args.json"))
    except Exception:  # noqa: BLE001  (an older repo without it: fall back to the flags)
        return {}


def load_split(dataset_name, train_data_dir, dataset_config_name, split, resolution, channels, max_images):
    """uint8 images (N, C, resolution, resolution) of a split, centre-cropped, at most ``max_images``."""
    from .data import cache_images, find_image_column, load_image_dataset

    data = load_image_dataset(dataset_name, dataset_config_name, train_data_dir, None, split)
    if max_images and len(data) > max_images:
        data = data.select(range(max_images))
    return cache_images(data, find_image_column(data), resolution, channels, center_crop=True, progress=False)


def reference_features(extractor, images, key, progress):
    """Inception features of the reference images, cached as safetensors under the ddpm-hf cache by ``key``
    (dataset, split, resolution, image count and the Inception file's hash)."""
    from safetensors.torch import load_file, save_file

    from .digits_metric import ddpm_hf_cache_dir
    from .inception import image_features

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    path = os.path.join(ddpm_hf_cache_dir(), "reference_features", f"{safe}.safetensors")
    if os.path.isfile(path):
        return load_file(path)["features"].double()
    features = image_features(extractor, images, progress=progress, desc="reference features")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({"features": features.float().contiguous()}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return features.double()


def bpd_result(pipe, images, timesteps, batch_size, seed, split, progress):
    """The bound on ``images`` (uint8): all T terms, or a stratified estimate from ``timesteps`` of them."""
    from .evaluation import held_out_bits, stratified_bits, summarize_bits

    T = pipe.scheduler.config.num_train_timesteps
    start = time.time()
    if timesteps and timesteps < T:
        rows, strata, per_stratum = stratified_bits(pipe.unet, pipe.scheduler, images, batch_size, seed, timesteps,
                                                    progress)
        curve = {"t": [(a + b - 1) / 2 for a, b in strata], "bits_per_dim": per_stratum.tolist()}
        kind = f"estimate from {timesteps} of {T} terms per image (decoder exact, stratified KL terms)"
    else:
        rows, per_t = held_out_bits(pipe.unet, pipe.scheduler, images, batch_size, seed, progress, per_timestep=True)
        curve = {"t": list(range(1, T)), "bits_per_dim": per_t[1:].tolist()}
        kind = f"all {T} terms"
    result = summarize_bits(rows)
    result["kl_terms_bits_per_dim"] = (rows[:, 0] - rows[:, 1] - rows[:, 2]).mean().item()  # sum of L_1..L_{T-1}
    result.update(split=split, terms=kind, seconds=round(time.time() - start, 1), seed=seed,
                  estimate=bool(timesteps and timesteps < T))
    return result, curve


def sample_scores(samples, metrics, reference, inception, digits_reference, reference_split="train"):
    """The sample metrics of uint8 samples: ``reference`` = (Inception features of the reference, description)."""
    from .feature_metrics import frechet_distance, kernel_distance, precision_recall
    from .inception import FEATURES_NAME, image_features

    scores = {}
    if any(m in metrics for m in INCEPTION_METRICS):
        real, described = reference
        fake = image_features(inception, samples, desc="sample features")
        common = {"features": FEATURES_NAME, "reference": described}
        if "fid" in metrics:
            scores["fid"] = {"value": frechet_distance(real, fake), **common}
        if "kid" in metrics:
            mean, std = kernel_distance(real, fake)
            scores["kid"] = {"value": mean, "std": std, **common}
        if "prc" in metrics:
            precision, recall = precision_recall(real, fake, k=3)
            scores["precision"] = {"value": precision, "k": 3, **common}
            scores["recall"] = {"value": recall, "k": 3, **common}
    if "digits" in metrics:
        from .digits_metric import LABEL, digits_metric

        d = digits_metric(samples, digits_reference)
        scores["digits_fd"] = {"value": d.pop("digits_fd"), "features": LABEL,
                               "reference": f"{d['num_reference']} images of digits split {reference_split}", **d}
    return scores


def plot_curve(curve, path, title):
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


def merge_into_metrics(folder, report):
    """Headline numbers of ``report`` into ``folder/metrics.json`` (a training run's): the bound as ``bits_per_dim``
    (or ``bits_per_dim_estimate``) and each sample score as an entry of ``sample_metrics`` (one per metric and step
    count, replaced when measured again)."""
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        return False
    metrics = _read_json(path)
    bpd = report.get("bpd")
    if bpd:
        keys = ("bits_per_dim", "bits_per_dim_stderr", "prior_bits_per_dim", "decoder_bits_per_dim", "num_images")
        if bpd["estimate"]:
            metrics["bits_per_dim_estimate"] = {k: bpd[k] for k in keys} | {"terms": bpd["terms"]}
        else:
            metrics.update({k: bpd[k] for k in keys})
    entries = list(metrics.get("sample_metrics", []))
    for run in report.get("sampling", []):
        for name, score in run["scores"].items():
            entry = {"metric": name, "value": score["value"], "num_samples": run["num_samples"],
                     "num_inference_steps": run["num_inference_steps"], "seed": report["seed"],
                     "split": report["reference_split"], "features": score["features"],
                     "reference": score["reference"], "evaluation": report["name"]}
            entries = [e for e in entries if (e["metric"], e["num_inference_steps"]) != (name, entry[
                "num_inference_steps"])] + [entry]
    if entries:
        metrics["sample_metrics"] = entries
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    return True


def evaluate(model, metrics=("bpd",), num_samples=1000, steps=(None,), seed=0, batch_size=256, split="test",
             reference_split="train", dataset_name=None, train_data_dir=None, dataset_config_name=None,
             max_eval_images=None, max_reference_images=50_000, inception_weights=None, bpd_timesteps=None,
             name=None, output_dir=None, update_model_card=False, progress=True, log=print, timestep_spacing=None):
    """Score ``model`` (see module docstring) and return the report written to ``eval-<name>.json``."""
    from . import DDPMHFPipeline
    from .data import DIGITS, dataset_source
    from .sampling import generate_uint8

    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
    inception = None
    if any(m in metrics for m in INCEPTION_METRICS):  # first, so a missing file fails within seconds
        from .inception import load_inception

        inception = load_inception(inception_weights)
    folder = model_folder(model)
    args = training_args_of(model, folder)
    if dataset_name is None and train_data_dir is None:
        dataset_name, train_data_dir = args.get("dataset_name"), args.get("train_data_dir")
        dataset_config_name = dataset_config_name or args.get("dataset_config_name")
    is_digits = dataset_source(dataset_name, train_data_dir) == DIGITS
    pipe = DDPMHFPipeline.from_pretrained(folder or model)
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling (one batch)")
    if timestep_spacing:  # how fewer sampling steps are spread over 0..T-1 (diffusers' option)
        from .scheduling_ddpm_hf import DDPMHFScheduler

        pipe.scheduler = DDPMHFScheduler.from_config({**pipe.scheduler.config, "timestep_spacing": timestep_spacing})
    channels, resolution = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    if "digits" in metrics and not (is_digits and channels == 1 and resolution == 8):
        raise ValueError("the digits metric applies to models of the embedded 8x8 digits only; this model is "
                         f"{resolution}x{resolution}x{channels} on {dataset_name or train_data_dir}")
    T = pipe.scheduler.config.num_train_timesteps
    steps = [s or T for s in steps]
    name = name or datetime.date.today().isoformat()
    out = output_dir or folder or os.path.join("evaluations", model.replace("/", "--"))
    os.makedirs(out, exist_ok=True)
    data = dataset_name or train_data_dir or DIGITS
    data_text = os.path.basename(os.path.normpath(data)) if os.path.isdir(str(data)) else data
    report = {"name": name, "model": os.path.basename(os.path.normpath(model)) if folder else model,
              "dataset": data_text, "seed": seed, "timestep_spacing": pipe.scheduler.config.timestep_spacing, "metrics": list(metrics), "reference_split": reference_split,
              "versions": _versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    def split_images(which, limit):
        return load_split(dataset_name, train_data_dir, dataset_config_name, which, resolution, channels, limit)

    if "bpd" in metrics:
        images = split_images(split, max_eval_images)
        log(f"bits/dim on {len(images)} images of split {split} ...")
        report["bpd"], curve = bpd_result(pipe, images, bpd_timesteps, batch_size, seed, split, progress)
        plot = os.path.join(out, f"eval-{name}-bpd.png")
        plot_curve(curve, plot, f"{report['model']}: bound per timestep, split {split} ({report['bpd']['terms']}); "
                   f"total {report['bpd']['bits_per_dim']:.3f} +- {report['bpd']['bits_per_dim_stderr']:.3f} bits/dim")
        report["bpd"]["plot"] = os.path.basename(plot)
        log(f"  {report['bpd']['bits_per_dim']:.4f} +- {report['bpd']['bits_per_dim_stderr']:.4f} bits/dim "
            f"({report['bpd']['terms']}, {report['bpd']['seconds']} s)")
    sample_metrics = [m for m in metrics if m in SAMPLE_METRICS]
    if sample_metrics:
        reference = digits_reference = None
        if inception is not None:
            ref_images = split_images(reference_split, max_reference_images)
            key = f"{data_text}-{dataset_config_name}-{reference_split}-{resolution}px-{channels}ch-{len(ref_images)}"
            key += f"-inception-{inception.fingerprint}"
            reference = (reference_features(inception, ref_images, key, progress),
                         f"{len(ref_images)} images of {data_text} split {reference_split}")
        if "digits" in sample_metrics:
            digits_reference = split_images(reference_split, None)
        report["sampling"] = []
        for k in steps:
            log(f"{num_samples} samples with {k} steps ...")
            samples, seconds = generate_uint8(pipe, num_samples, batch_size, k, seed)
            scores = sample_scores(samples, sample_metrics, reference, inception, digits_reference, reference_split)
            run = {"num_inference_steps": k, "num_samples": num_samples, "sampling_seconds": round(seconds, 2),
                   "images_per_second": round(num_samples / seconds, 2), "scores": scores}
            report["sampling"].append(run)
            _save_grid(samples[:36], os.path.join(out, f"eval-{name}-samples-{k}steps.png"),
                       f"{report['model']}: {k} steps, seed {seed}")
            log("  " + ", ".join(f"{n} {s['value']:.4g}" for n, s in scores.items()) + f" ({seconds:.1f} s sampling)")
        if len(steps) > 1:
            plot_steps(report["sampling"], os.path.join(out, f"eval-{name}-steps.png"),
                       f"{report['model']}: {num_samples} samples, seed {seed}")
    path = os.path.join(out, f"eval-{name}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    report["path"] = path
    if folder is not None and merge_into_metrics(folder, report) and update_model_card:
        from .model_card import write_model_card

        write_model_card(folder)
    return report


def _save_grid(samples_uint8, path, title):
    from .images import make_grid

    make_grid(samples_uint8.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0, title=title).save(path)


def _versions():
    import diffusers

    from . import __version__

    return {"ddpm-hf": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}

"""``ddpm-hf evaluate``: score a trained model and write what was measured beside it.

For a model (a training output folder, a pipeline folder or a Hub repo id) and a list of metrics:
- ``bpd``: the variational bound on a held-out split (all T terms, or ``bpd_timesteps`` of them as a stratified
  estimate with its standard error), with a plot of the bound per timestep;
- ``fid``, ``kid``, ``prc``: N samples against a reference split in TF-Inception features (``inception.py``; the
  distances by torchmetrics, precision/recall by ``features.py``), reference features cached per
  dataset/split/resolution;
- ``digits``: the offline digits metric (``digits.py``), for models of the embedded digits: against all 1,797
  digits whatever the reference split, with the real-data floor at the same sample count beside the score;
- ``mnist``: the offline MNIST metric (``mnist.py``), for 28x28 models of the embedded MNIST digits: against the 500
  held-out digits, with the floor of as many real training digits, the classifier's view of the samples and the
  nearest-training-image check.
The sample metrics are computed at every requested number of sampling steps, with the sampling time. The result goes
to ``eval-<name>.json`` (every score with its sample count, steps, seed, split and feature extractor), plots beside
it (``plots.py``), the headline numbers into ``metrics.json`` and, on request, the model card (refused at the start,
unless ``replace_edited_card``, when the card was edited by hand).
"""

import datetime
import json
import os
import time
from dataclasses import dataclass

import torch

from ..errors import BadArgument, CardEdited
from . import ALL_METRICS, INCEPTION_METRICS, SAMPLE_METRICS
from .merge import merge_into_metrics
from .model_source import model_folder, training_args_of


def load_split(dataset_name, train_data_dir, dataset_config_name, split, resolution, channels, max_images,
               class_names=None, label_column=None):
    """uint8 images (N, C, resolution, resolution) of a split, centre-cropped, at most ``max_images``. With
    ``class_names`` (a class-conditional model's, in id order): ``(images, class ids (N,))``, the labels read from
    ``label_column`` (default: the ClassLabel column, see ``data.find_label_column``)."""
    from ..data import cache_images, find_image_column, find_label_column, load_image_dataset, row_labels

    data = load_image_dataset(dataset_name, dataset_config_name, train_data_dir, None, split)
    if max_images and len(data) > max_images:
        data = data.select(range(max_images))
    images, kept = cache_images(data, find_image_column(data), resolution, channels, center_crop=True,
                                progress=False, with_index=True)
    if class_names is None:
        return images
    return images, row_labels(data, find_label_column(data, label_column), class_names, kept, f"the split {split}")


def reference_features(extractor, images, key, progress):
    """Inception features of the reference images, cached as safetensors under the ddpm-hf cache by ``key``
    (dataset, split, resolution, image count and the Inception file's hash)."""
    from safetensors.torch import load_file, save_file

    from .digits import ddpm_hf_cache_dir
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


def bpd_result(pipe, images, timesteps, batch_size, seed, split, progress, labels=None):
    """The bound on ``images`` (uint8): all T terms, or a stratified estimate from ``timesteps`` of them; with the
    images' class ids ``labels`` (a class-conditional model), the conditional bound on -log p(x | y)."""
    from .bound import held_out_bits, stratified_bits, summarize_bits

    T = pipe.scheduler.config.num_train_timesteps
    start = time.time()
    if timesteps and timesteps < T:
        rows, strata, per_stratum = stratified_bits(pipe.unet, pipe.scheduler, images, batch_size, seed, timesteps,
                                                    progress, labels=labels)
        curve = {"t": [(a + b - 1) / 2 for a, b in strata], "bits_per_dim": per_stratum.tolist()}
        kind = f"estimate from {timesteps} of {T} terms per image (decoder exact, stratified KL terms)"
    else:
        rows, per_t = held_out_bits(pipe.unet, pipe.scheduler, images, batch_size, seed, progress, per_timestep=True,
                                    labels=labels)
        curve = {"t": list(range(1, T)), "bits_per_dim": per_t[1:].tolist()}
        kind = f"all {T} terms"
    result = summarize_bits(rows)
    result["kl_terms_bits_per_dim"] = (rows[:, 0] - rows[:, 1] - rows[:, 2]).mean().item()  # sum of L_1..L_{T-1}
    result.update(split=split, terms=kind, seconds=round(time.time() - start, 1), seed=seed,
                  estimate=bool(timesteps and timesteps < T), conditional=labels is not None)
    return result, curve


def sample_scores(samples, metrics, reference, inception, digits_reference, reference_split="train"):
    """The sample metrics of uint8 samples: ``reference`` = (Inception features of the reference, description)."""
    from .features import frechet_distance, kernel_distance, precision_recall
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
        from .digits import LABEL, digits_metric

        d = digits_metric(samples, digits_reference)  # its floor at this sample count beside it
        scores["digits_fd"] = {"value": d.pop("digits_fd"), "features": LABEL, **d}
    if "mnist" in metrics:
        from .mnist import LABEL as MNIST_LABEL
        from .mnist import mnist_metric

        m = mnist_metric(samples)  # its floor at this sample count beside it
        scores["mnist_fd"] = {"value": m.pop("mnist_fd"), "features": MNIST_LABEL, **m}
    return scores


@dataclass
class EvaluationConfig:
    """What ``evaluate`` measures and on what (see the module docstring). ``steps``: sampling step counts, None for
    T; data defaults to the run's own (training_args.json); ``output_dir`` to the model's folder. Checked on
    creation: a value out of range raises BadArgument naming the field."""

    metrics: tuple = ("bpd",)
    num_samples: int = 1000
    steps: tuple = (None,)
    seed: int = 0
    batch_size: int = 256
    split: str = "test"
    reference_split: str = "train"
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    max_eval_images: int | None = None
    max_reference_images: int | None = 50_000
    inception_weights: str | None = None
    bpd_timesteps: int | None = None
    timestep_spacing: str | None = None
    scheduler: str | None = None  # the sampler of the sample metrics, a name of sampling.SCHEDULERS (None: the model's)
    guidance_scales: tuple = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0)  # metric "guidance": the scales swept (diffusers' s)
    name: str | None = None
    output_dir: str | None = None
    update_model_card: bool = False
    replace_edited_card: bool = False  # with update_model_card: replace a README.md edited by hand

    def __post_init__(self):
        self.metrics, self.steps = tuple(self.metrics), tuple(self.steps)
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown or not self.metrics:
            raise BadArgument("metrics", f"metrics {','.join(self.metrics)}: choose from {', '.join(ALL_METRICS)}")
        for field in ("num_samples", "batch_size", "max_eval_images", "max_reference_images"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise BadArgument(field, f"{field} must be >= 1, got {value}")
        if any(s is not None and s < 1 for s in self.steps):
            raise BadArgument("num_inference_steps", f"num_inference_steps must be >= 1, got {min(self.steps)}")
        if self.timestep_spacing not in (None, "leading", "trailing", "linspace"):
            raise BadArgument("timestep_spacing", f"timestep_spacing {self.timestep_spacing}: choose from leading, "
                              "trailing, linspace")
        self.guidance_scales = tuple(float(s) for s in self.guidance_scales)
        if not self.guidance_scales or min(self.guidance_scales) < 0:
            raise BadArgument("guidance_scales", f"guidance_scales must be >= 0, got {self.guidance_scales}")
        if self.scheduler is not None:
            from ..sampling import SCHEDULERS

            if self.scheduler not in SCHEDULERS:
                raise BadArgument("scheduler", f"scheduler {self.scheduler}: choose from {', '.join(SCHEDULERS)}")


def evaluate(model, config=None, progress=True, log=print):
    """Score ``model`` (a training output folder, a pipeline folder or a Hub repo id) as ``config`` (an
    EvaluationConfig) says, and return the report written to ``eval-<name>.json`` (see the module docstring)."""
    from ..conditioning import null_class_id
    from ..data import DIGITS, MNIST, dataset_source
    from ..pipeline_ddpm_hf import DDPMHFPipeline
    from ..sampling import balanced_labels, generate_uint8, use_scheduler
    from .plots import plot_curve, plot_steps, save_grid

    c = config or EvaluationConfig()
    metrics, num_samples, seed, batch_size, name = c.metrics, c.num_samples, c.seed, c.batch_size, c.name
    dataset_name, train_data_dir, dataset_config_name = c.dataset_name, c.train_data_dir, c.dataset_config_name
    inception = None
    if any(m in metrics for m in INCEPTION_METRICS):  # first, so a missing file fails within seconds
        from .inception import load_inception

        inception = load_inception(c.inception_weights)
    folder = model_folder(model)
    if c.update_model_card and folder is not None and not c.replace_edited_card:
        from ..model_card import edited_by_hand
        from ..run_dir import METRICS, MODEL_CARD, TRAINING_ARGS

        run = all(os.path.isfile(os.path.join(folder, name)) for name in (METRICS, TRAINING_ARGS))
        if run and edited_by_hand(folder):  # refused before the work, not after it
            raise CardEdited(os.path.join(folder, MODEL_CARD))
    args = training_args_of(model, folder)
    if dataset_name is None and train_data_dir is None:
        dataset_name, train_data_dir = args.get("dataset_name"), args.get("train_data_dir")
        dataset_config_name = dataset_config_name or args.get("dataset_config_name")
    source = dataset_source(dataset_name, train_data_dir)
    pipe = DDPMHFPipeline.from_pretrained(folder or model)
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="sampling (one batch)")
    if c.timestep_spacing:  # how fewer sampling steps are spread over 0..T-1 (diffusers' option)
        from ..scheduling_ddpm_hf import DDPMHFScheduler

        pipe.scheduler = DDPMHFScheduler.from_config({**pipe.scheduler.config,
                                                      "timestep_spacing": c.timestep_spacing})
    channels, resolution = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    # the guidance sweep scores with the dataset's own offline metric: digits (8x8) or mnist (28x28)
    guidance_metric = "mnist" if source == MNIST and channels == 1 and resolution == 28 else "digits"
    if ("digits" in metrics or ("guidance" in metrics and guidance_metric == "digits")) and not (
            source == DIGITS and channels == 1 and resolution == 8):
        raise BadArgument("metrics", "the digits metric applies to models of the embedded 8x8 digits only; this "
                          f"model is {resolution}x{resolution}x{channels} on {dataset_name or train_data_dir}"
                          + (" (the guidance sweep needs a model of the embedded digits or MNIST)"
                             if "guidance" in metrics else ""))
    if "mnist" in metrics and not (source == MNIST and channels == 1 and resolution == 28):
        raise BadArgument("metrics", "the mnist metric applies to 28x28 grayscale models of the embedded MNIST "
                          f"digits only; this model is {resolution}x{resolution}x{channels} on "
                          f"{dataset_name or train_data_dir or DIGITS}")
    if "mnist" in metrics and c.num_samples > 4500:
        raise BadArgument("num_samples", f"num_samples {c.num_samples}: the mnist metric's floor draws as many real "
                          "digits from the 4,500 training digits, so at most 4500")
    if "guidance" in metrics and null_class_id(pipe.unet) is None:
        raise BadArgument("metrics", "the guidance sweep needs a class-conditional model (train --class_conditional); "
                          "this one is unconditional")
    T = pipe.scheduler.config.num_train_timesteps
    steps = [s or T for s in c.steps]
    name = name or datetime.date.today().isoformat()
    out = c.output_dir or folder or os.path.join("evaluations", model.replace("/", "--"))
    os.makedirs(out, exist_ok=True)
    data = dataset_name or train_data_dir or DIGITS
    data_text = os.path.basename(os.path.normpath(data)) if os.path.isdir(str(data)) else data
    report = {"name": name, "model": os.path.basename(os.path.normpath(model)) if folder else model,
              "dataset": data_text, "seed": seed, "timestep_spacing": pipe.scheduler.config.timestep_spacing,
              "scheduler": c.scheduler or type(pipe.scheduler).__name__,
              "metrics": list(metrics), "reference_split": c.reference_split, "versions": _versions(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    def split_images(which, limit):
        return load_split(dataset_name, train_data_dir, dataset_config_name, which, resolution, channels, limit)

    if "bpd" in metrics:
        split = c.split
        labels = None
        if null_class_id(pipe.unet) is not None:  # class-conditional: the conditional bound, each image's label given
            id2label = dict(getattr(pipe.config, "id2label", None) or {})
            names = [id2label.get(i, str(i)) for i in range(null_class_id(pipe.unet))]
            images, labels = load_split(dataset_name, train_data_dir, dataset_config_name, split, resolution,
                                        channels, c.max_eval_images, names, args.get("label_column"))
        else:
            images = split_images(split, c.max_eval_images)
        log(f"bits/dim on {len(images)} images of split {split}{' (labels given)' if labels is not None else ''} ...")
        report["bpd"], curve = bpd_result(pipe, images, c.bpd_timesteps, batch_size, seed, split, progress, labels)
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
            ref_images = split_images(c.reference_split, c.max_reference_images)
            key = f"{data_text}-{dataset_config_name}-{c.reference_split}-{resolution}px-{channels}ch"
            key += f"-{len(ref_images)}-inception-{inception.fingerprint}"
            reference = (reference_features(inception, ref_images, key, progress),
                         f"{len(ref_images)} images of {data_text} split {c.reference_split}")
        report["sampling"] = []
        sampler = use_scheduler(DDPMHFPipeline.from_pipe(pipe, torch_dtype=None), c.scheduler)  # bound: pipe's
        sampler.set_progress_bar_config(**pipe._progress_bar_config)
        for k in steps:
            log(f"{num_samples} samples with {k} steps ...")
            # a class-conditional model: the classes in turn, at the pipeline's default guidance scale
            samples, seconds = generate_uint8(sampler, num_samples, batch_size, k, seed,
                                              class_labels=balanced_labels(sampler, num_samples))
            scores = sample_scores(samples, sample_metrics, reference, inception, digits_reference, c.reference_split)
            run = {"num_inference_steps": k, "num_samples": num_samples, "sampling_seconds": round(seconds, 2),
                   "images_per_second": round(num_samples / seconds, 2), "scores": scores}
            report["sampling"].append(run)
            save_grid(samples[:36], os.path.join(out, f"eval-{name}-samples-{k}steps.png"),
                      f"{report['model']}: {k} steps, seed {seed}")
            log("  " + ", ".join(f"{n} {s['value']:.4g}" + (f" (real-data floor {s[n + '_floor']:.4g} +- "
                                 f"{s[n + '_floor_std']:.2g})" if n + "_floor" in s else "")
                                 for n, s in scores.items()) + f" ({seconds:.1f} s sampling)")
        if len(steps) > 1:
            plot_steps(report["sampling"], os.path.join(out, f"eval-{name}-steps.png"),
                       f"{report['model']}: {num_samples} samples, seed {seed}")
    if "guidance" in metrics:  # issue 18 sec. 3: label accuracy and quality against the guidance scale
        from .conditional import conditional_report

        sampler = use_scheduler(DDPMHFPipeline.from_pipe(pipe, torch_dtype=None), c.scheduler)
        sampler.set_progress_bar_config(**pipe._progress_bar_config)
        per_class = max(1, num_samples // len(pipe.class_id_choices()))
        sweep = conditional_report(sampler, out, name, c.guidance_scales, per_class, steps[0], batch_size, seed, log,
                                   metric=guidance_metric)
        report["guidance"] = {"metric": guidance_metric, "summary": sweep["summary"], "table": sweep["table"],
                              "plot": sweep["plot"],
                              "path": os.path.basename(sweep["path"]), "num_inference_steps": steps[0],
                              "default_guidance_scale": pipe._guidance_scale(None, [0])}
    path = os.path.join(out, f"eval-{name}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    report["path"] = path
    if folder is not None and merge_into_metrics(folder, report) and c.update_model_card:
        from ..model_card import write_model_card

        write_model_card(folder, replace_edited_card=c.replace_edited_card)
    return report


def _versions():
    import diffusers

    from .. import __version__

    return {"ddpm-hf": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}

"""The model card of a distilled student (README.md beside its pipeline): what it is and which teacher it came from,
how to sample it with 1 to N UNet calls (with or without ddpm_hf), its sample grids at 1, 2 and 4 calls, its quality
against UNet calls next to the teacher's samplers (scores ``ddpm-hf evaluate`` merged into each folder's
metrics.json; one table and one plot), and the distillation's settings and time beside the teacher's training time.
``ddpm_hf.model_card`` renders it for a folder whose training_args.json records a distillation."""

import json
import os

from ..model_card_sampling import SAMPLER_PLOT, comparable_scores, sampling_text
from ..run_dir import read_metrics

STUDENT_SAMPLER = "student"  # the label of the student's own scores in the table and the plot


def _read(path):
    with open(path) as f:
        return json.load(f)


def _teacher_metrics(args):
    """The teacher's metrics.json, when the teacher is a local folder (a Hub teacher's are not fetched)."""
    teacher = args["distillation"]["teacher"]
    return read_metrics(teacher) if os.path.isdir(teacher) else {}


def quality_lines(output_dir):
    """(metric, {label: [(UNet calls, score, entry), ...]}): the student's comparable scores (``comparable_scores``,
    one or more) and the teacher's of the same metric, one line per sampler; (None, {}) when the student has none."""
    from ..sampling import unet_calls

    args, metrics = _read(os.path.join(output_dir, "training_args.json")), read_metrics(output_dir)
    metric, scored = comparable_scores(metrics, minimum=1)  # a K-step student has one count of calls
    if not scored:
        return None, {}
    lines = {STUDENT_SAMPLER: [(e["num_inference_steps"], e["value"], e) for e in scored]}
    for e in _teacher_metrics(args).get("sample_metrics", []):
        if e["metric"] == metric and e["num_samples"] == scored[0]["num_samples"]:
            sampler = e.get("sampler", "ddpm")
            lines.setdefault(f"teacher, {sampler}", []).append((unet_calls(sampler, e["num_inference_steps"]),
                                                                e["value"], e))
    return metric, {k: sorted(v, key=lambda x: x[0]) for k, v in lines.items()}


def plot_student_scores(output_dir, path):
    """The student's and the teacher's scores against UNet calls (``quality_lines``) as one PNG at ``path``; returns
    the lines drawn, or None (drawing nothing) when the student has no score."""
    from ..evaluation.plots import plot_quality_against_calls
    from ..model_card_sampling import SAMPLE_METRIC_NAMES

    metric, lines = quality_lines(output_dir)
    if not lines:
        return None
    entries = [e for points in lines.values() for _, _, e in points]
    floors = [(e["floor"], e.get("floor_std") or 0.0) for e in entries if e.get("floor") is not None]
    name = SAMPLE_METRIC_NAMES.get(metric, metric)
    drawn = {label: [(calls, value) for calls, value, _ in points] for label, points in lines.items()}
    plot_quality_against_calls(drawn, path, f"{name}, {entries[0]['num_samples']:,} samples per score",
                               ylabel=name.split(" (")[0], floor=floors[0] if floors else None)
    return drawn


def student_card(output_dir, repo_id=None):
    """The ``huggingface_hub.ModelCard`` of the student in ``output_dir``."""
    from huggingface_hub import ModelCard, ModelCardData

    args = _read(os.path.join(output_dir, "training_args.json"))
    metrics = read_metrics(output_dir)
    index = _read(os.path.join(output_dir, "model_index.json"))
    unet = _read(os.path.join(output_dir, "unet", "config.json"))
    scheduler = _read(os.path.join(output_dir, "scheduler", "scheduler_config.json"))
    distillation = args["distillation"]
    teacher = distillation["teacher"]
    teacher_name = teacher if "/" in teacher and not os.path.isdir(teacher) else os.path.basename(
        os.path.normpath(teacher))
    resolution, channels = unet["sample_size"], unet["in_channels"]
    grid, default_steps = scheduler.get("original_inference_steps"), index.get("num_inference_steps", 4)
    name = repo_id.split("/")[-1] if repo_id else f"{teacher_name}-student"
    conditional = index.get("null_class_id") is not None
    matching = distillation["method"] == "distribution_matching"
    progressive = distillation["method"] == "progressive" or matching  # a refined progressive student samples alike
    card_data = ModelCardData(library_name="diffusers", pipeline_tag="unconditional-image-generation",
                              model_name=name, base_model=teacher if "/" in teacher and not os.path.isdir(teacher)
                              else None, tags=["diffusers", "ddpm-hf", f"{distillation['method']}-distillation",
                                               "few-step"])
    scales = index.get("guidance_scales")
    usage = (f"images = pipe(class_labels=[0, 1, 2, 3], num_inference_steps={default_steps}"
             + (f", guidance_scale={scales[-1]}" if scales else "") + ").images" if conditional
             else f"images = pipe(batch_size=16, num_inference_steps={default_steps}).images")
    how = ("distribution matching (Yin et al. 2024, DMD: the samples of a progressive student's "
           f"{default_steps}-step sampler moved towards the teacher's distribution, with a second model trained on "
           f"the student's samples; the student refined: "
           + ("`progressive/`, this run's first phase of progressive distillation)" if distillation.get(
               "progressive_phase") else f"`{_student_name(distillation.get('init_student'))}`)")
           if matching else
           "progressive distillation (Salimans & Ho 2022: rounds that each halve the sampler's steps, from the "
           f"teacher's {distillation['num_teacher_steps']} to {default_steps})" if progressive else
           "consistency distillation (Song et al. 2023, in the discrete-time form of latent consistency models)")
    sampling = (f"It samples with {default_steps} deterministic DDIM step{'s' if default_steps > 1 else ''} (one "
                "UNet call each) through diffusers' `DDIMScheduler` (trailing timesteps, as it was trained)"
                + ("." if matching else "; the students of the earlier rounds, with more steps, are in `rounds/`.")
                if progressive else
                f"It samples with 1 to {grid} UNet calls (default {default_steps}) through diffusers' "
                "`LCMScheduler`.")
    lines = [f"# {name}", "",
             f"A few-step student of the DDPM `{teacher_name}`, distilled with ddpm-hf by {how}: "
             f"{resolution}x{resolution} pixels, {'grayscale' if channels == 1 else f'{channels} channels'}"
             + (", class-conditional, the teacher's classifier-free guidance distilled in at the scales "
                f"{', '.join(f'{w:g}' for w in scales or [])} (an input of the student: `guidance_scale=`, default "
                f"{index.get('guidance_scale')})" if conditional else "")
             + f". {sampling}", ""]
    for steps in (1, 2, 4):
        for image in (f"samples-{steps}-step/grid.png", f"rounds/{steps}-step/samples-{steps}-step/grid.png"):
            if os.path.isfile(os.path.join(output_dir, image)):
                lines += [f"![{steps} UNet call{'s' if steps > 1 else ''}]({image})", ""]
                break
    lines += ["## How to use", "", "```python", "from diffusers import DiffusionPipeline", "",
              f'pipe = DiffusionPipeline.from_pretrained("{repo_id or "path/to/this/folder"}", '
              "trust_remote_code=True)", usage, "```", ""]
    if progressive:
        rounds = sorted((int(n.split("-")[0]) for n in os.listdir(os.path.join(output_dir, "rounds"))
                         if n.endswith("-step")), reverse=True) if os.path.isdir(os.path.join(output_dir, "rounds")) \
            else []
        if rounds:
            k = 4 if 4 in rounds else rounds[0]
            lines += [f"Each round's student is a pipeline of its own in `rounds/K-step/` (K = "
                      f"{', '.join(map(str, rounds))}), sampled with its own K steps:", "", "```python",
                      "from huggingface_hub import snapshot_download", "",
                      f'folder = snapshot_download("{repo_id or "user/this-repo"}", allow_patterns=["rounds/{k}-step/*"])',
                      f'pipe = DiffusionPipeline.from_pretrained(f"{{folder}}/rounds/{k}-step", trust_remote_code=True)',
                      "```", ""]
    metric, quality = quality_lines(output_dir)
    if quality:
        lines += ["## Quality against UNet calls", "",
                  "| model and sampler | UNet calls | score | samples | real-data floor |", "|---|---|---|---|---|"]
        for label, points in quality.items():
            for calls, value, e in points:
                floor = f"{e['floor']:.4g}" if e.get("floor") is not None else ""
                lines.append(f"| {label}{'' if label == STUDENT_SAMPLER else f' ({sampling_text(e)})'} | {calls} | "
                             f"{value:.4g} ({metric}) | {e['num_samples']:,} | {floor} |")
        lines.append("")
        if os.path.isfile(os.path.join(output_dir, SAMPLER_PLOT)):
            lines += [f"![quality against UNet calls]({SAMPLER_PLOT})", ""]
    teacher_seconds = metrics.get("teacher_train_seconds")
    refined_seconds = _refined_run_seconds(distillation) if matching else None
    lines += ["## Distillation", "", "| setting | value |", "|---|---|",
              f"| teacher | `{teacher_name}` |",
              (f"| method | distribution matching of a {default_steps}-step progressive student, "
               f"{distillation.get('fake_updates')} fake-model updates per step at learning rate "
               f"{distillation.get('fake_learning_rate')} |" if matching else
               f"| method | progressive, first teacher: {distillation['num_teacher_steps']} steps of "
               f"{distillation.get('teacher_solver')}, rounds halving to {default_steps} |" if progressive else
               f"| method | {distillation['method']}, teacher ODE step {distillation.get('teacher_solver')}, grid of "
               f"{grid} points |"),
              f"| steps x batch | {metrics.get('steps')} x {args.get('train_batch_size')} |",
              f"| optimiser | AdamW, learning rate {args.get('learning_rate')}, "
              f"{'weights EMA' if progressive else 'target EMA'} {args.get('ema_max_decay')} |",
              f"| distillation time | {metrics.get('distill_seconds', 0):,.0f} s"
              + (f" of distribution matching, after {refined_seconds:,.0f} s of the progressive run it refines"
                 if refined_seconds else "")
              + (f" (the teacher's training: {teacher_seconds:,.0f} s)" if teacher_seconds else "") + " |", ""]
    text = "---\n" + card_data.to_yaml() + "\n---\n\n" + "\n".join(lines)
    return ModelCard(text)


def _student_name(folder):
    """A refined student's folder as the card names it, without the machine's path: RUN/rounds/K-step or RUN."""
    parts = os.path.normpath(folder or "").split(os.sep)
    return "/".join(parts[-3:]) if len(parts) >= 3 and parts[-2] == "rounds" else parts[-1]


def _refined_run_seconds(distillation):
    """The distill_seconds of the progressive run whose student distribution matching refined (its metrics.json, in
    the student's folder or two levels up from rounds/K-step), or None."""
    folder = os.path.normpath(distillation.get("init_student") or "")
    run = os.path.dirname(os.path.dirname(folder)) if os.path.basename(os.path.dirname(folder)) == "rounds" else folder
    return read_metrics(run).get("distill_seconds") if os.path.isdir(run) else None

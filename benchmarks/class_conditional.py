"""Issues 18 and 29's goals, measured: class-conditional models of the embedded digits or MNIST (`ddpm-hf train
--class_conditional`, the dataset's recipe, one per training seed) over classifier-free guidance scales, against an
unconditional model of the same recipe. ``--metric`` picks the offline metric: digits (8x8) or mnist (28x28).

For every conditional model and guidance scale s (diffusers' convention: 0 = unconditional, 1 = the conditional model
alone): PER_CLASS samples of each of the 10 digits (image i seeded seed + i, the same noise at every s), the share the
metric's classifier recognises as the requested digit, and the metric's FD of all of them (digits: against the 1,797
digits; mnist: against the 500 held-out digits) with the real-data floor at that sample count
(``ddpm_hf.evaluation.conditional``). The unconditional model: the same
number of samples with the same sampler, the FD over ``--baseline_seeds`` sample seeds (their spread is the
sampling noise of its FD). Then the table over the conditional models' seeds (mean +- std, per seed), the plot, and
the chosen default: among the scales where every seed reaches the accuracy goal and the mean FD is no worse than the
unconditional model's, the one with the lowest mean FD.

A MODEL is a saved pipeline folder (a finished run), or RUN/checkpoint-STEP[:unet_ema] (a training checkpoint's UNet,
the scheduler from ``--scheduler_from``, the classes "0".."9" with the null class last, as training saves them).

    OMP_NUM_THREADS=1 python benchmarks/class_conditional.py --models outputs/cond_s0 outputs/cond_s1 outputs/cond_s2 \\
        --baseline outputs/uncond_s0 --scheduler dpmsolver++ --num_inference_steps 20 --per_class 100

Writes OUTPUT_DIR/class_conditional.json, class_conditional.png and one labelled grid per model and scale under
OUTPUT_DIR/grids/, and prints markdown tables. On a shared machine, one process per model (each with its own
OUTPUT_DIR), then ``--merge DIR1/class_conditional.json DIR2/... --output_dir DIR`` for the table over seeds.
"""

import argparse
import json
import os
import time

import numpy as np
import torch


def load(spec, scheduler_from):
    """The DDPMHFPipeline of a MODEL spec (module docstring)."""
    from diffusers import UNet2DModel

    from ddpm_hf.pipeline_ddpm_hf import DDPMHFPipeline
    from ddpm_hf.scheduling_ddpm_hf import DDPMHFScheduler

    folder, _, subfolder = spec.partition(":")
    if os.path.basename(os.path.normpath(folder)).startswith("checkpoint-"):
        unet = UNet2DModel.from_pretrained(folder, subfolder=subfolder or "unet_ema")
        scheduler = DDPMHFScheduler.from_pretrained(scheduler_from, subfolder="scheduler")
        n = unet.config.num_class_embeds
        conditional = {} if n is None else {"id2label": {i: str(i) for i in range(n - 1)}, "null_class_id": n - 1}
        return DDPMHFPipeline(unet=unet, scheduler=scheduler, **conditional)
    return DDPMHFPipeline.from_pretrained(folder)


def baseline_scores(pipe, num_samples, steps, seeds, batch_size, metric):
    """The unconditional model's FD in ``metric`` ("digits" or "mnist") at each sample seed (image i of seed s:
    s + i): one dict per seed with that metric's keys ("digits_fd", ...)."""
    from ddpm_hf.evaluation.conditional import offline_metric
    from ddpm_hf.sampling import generate_uint8

    classifier, score = offline_metric(metric)
    out = []
    for seed in seeds:
        samples, seconds = generate_uint8(pipe, num_samples, batch_size, steps, seed)
        d = score(samples, classifier, 20)
        keys = ("fd", "fd_floor", "fd_floor_std", "kid", "confidence", "class_balance")
        out.append({"seed": seed, **{f"{metric}_{k}": d[f"{metric}_{k}"] for k in keys},
                    "sampling_seconds": round(seconds, 1), "samples": samples})
    return out


def training_seed(spec):
    """The seed in the run's training_args.json (the run folder, or a checkpoint's parent), else None."""
    folder = spec.split(":")[0]
    for path in (os.path.join(folder, "training_args.json"), os.path.join(folder, "..", "training_args.json")):
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f).get("seed")
    return None


def measure(args):
    """The sweep of every model and the baseline's scores: {"rows", "baseline", "sampler"}."""
    from ddpm_hf.evaluation.conditional import guidance_sweep
    from ddpm_hf.evaluation.plots import save_grid
    from ddpm_hf.sampling import use_scheduler

    grids = os.path.join(args.output_dir, "grids")
    rows, sampler = [], None
    for i, spec in enumerate(args.models or []):
        pipe = use_scheduler(load(spec, args.scheduler_from), args.scheduler)
        pipe.set_progress_bar_config(disable=True)
        steps = args.num_inference_steps or pipe.scheduler.config.num_train_timesteps
        sampler = f"{type(pipe.scheduler).__name__} {steps} steps"
        seed = training_seed(spec)
        name = f"{os.path.basename(os.path.normpath(spec.split(':')[0]))}-N{args.per_class * 10}"
        print(f"{spec} (training seed {seed}): {len(args.guidance_scales)} scales x {args.per_class * 10} samples, "
              f"{sampler}", flush=True)
        for row in guidance_sweep(pipe, args.guidance_scales, args.per_class, steps, args.batch_size, args.seed,
                                  grid_dir=grids, name=name, log=lambda m: print(m, flush=True), metric=args.metric):
            rows.append(row | {"model": spec, "sample_seed": args.seed, "seed": i if seed is None else seed})
    baseline = None
    if args.baseline:
        pipe = use_scheduler(load(args.baseline, args.scheduler_from), args.scheduler)
        pipe.set_progress_bar_config(disable=True)
        steps = args.num_inference_steps or pipe.scheduler.config.num_train_timesteps
        sampler = f"{type(pipe.scheduler).__name__} {steps} steps"
        print(f"{args.baseline}: {args.per_class * 10} unconditional samples x {len(args.baseline_seeds)} sample seeds",
              flush=True)
        scores = baseline_scores(pipe, args.per_class * 10, steps, args.baseline_seeds, args.batch_size, args.metric)
        os.makedirs(grids, exist_ok=True)
        save_grid(scores[0]["samples"][:100], os.path.join(grids, "baseline.png"),
                  f"{args.baseline} (unconditional), {sampler}")
        for s in scores:
            s.pop("samples")
            fd = f"{args.metric}_fd"
            print(f"  sample seed {s['seed']}: {args.metric} FD {s[fd]:.4g} (floor {s[fd + '_floor']:.4g} +- "
                  f"{s[fd + '_floor_std']:.2g}), {s['sampling_seconds']} s sampling", flush=True)
        fds = [s[f"{args.metric}_fd"] for s in scores]
        folder = os.path.normpath(args.baseline.split(":")[0])
        name = os.path.basename(folder)
        if name.startswith("checkpoint-"):
            name = f"{os.path.basename(os.path.dirname(folder))}/{name}"
        baseline = {"name": name, "model": args.baseline,
                    "num_samples": args.per_class * 10, "fd": float(np.mean(fds)),
                    "fd_std": float(np.std(fds, ddof=1)) if len(fds) > 1 else 0.0, "values": fds,
                    "per_seed": scores}
    return {"rows": rows, "baseline": baseline, "sampler": sampler}


def report_tables(rows, baseline, sampler, target, output_dir, title):
    """Table, per-class table, plot and choice of measured rows (one or several models); printed and returned."""
    from ddpm_hf.evaluation.conditional import TARGET_ACCURACY, choose_guidance, plot_sweep, summarize, sweep_table

    summary = summarize(rows)
    chosen = choose_guidance(summary, baseline["fd"] if baseline else None, target)
    target = target if target is not None else TARGET_ACCURACY[summary[0]["metric"]]
    table = sweep_table(summary, baseline)
    plot = os.path.join(output_dir, "class_conditional.png")
    plot_sweep(summary, plot, title, baseline, target)
    n = summary[0]["num_samples"]
    print(f"\n### class accuracy and {summary[0]['metric']} FD over guidance scales ({sampler}, {n} samples per "
          "scale and model)\n")
    print(table)
    print("\nper-class accuracy at each scale (mean over seeds):\n")
    print("| s | " + " | ".join(str(d) for d in range(10)) + " |\n|---|" + "---|" * 10)
    for e in summary:
        group = [r for r in rows if r["guidance_scale"] == e["guidance_scale"]]
        print(f"| {e['guidance_scale']:g} | " + " | ".join(
            f"{np.mean([r['per_class_accuracy'][d] for r in group]):.0%}" for d in range(10)) + " |")
    print(f"\nchosen guidance scale (every seed >= {target:.0%}, mean FD <= the unconditional model's, lowest mean "
          f"FD): {chosen}")
    return {"summary": summary, "chosen_guidance_scale": chosen, "table": table, "plot": os.path.basename(plot)}


def main():
    from ddpm_hf.evaluation.conditional import DEFAULT_GUIDANCE_SCALES, METRICS
    from ddpm_hf.sampling import SCHEDULERS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help="conditional models, one per training seed")
    p.add_argument("--baseline", default=None, help="an unconditional model of the same recipe")
    p.add_argument("--baseline_seeds", type=int, nargs="+", default=[0, 100_000],
                   help="sample seeds of the unconditional model (its FD's sampling spread)")
    p.add_argument("--guidance_scales", type=float, nargs="+", default=list(DEFAULT_GUIDANCE_SCALES))
    p.add_argument("--per_class", type=int, default=100, help="samples per class and scale (default 100: N = 1,000)")
    p.add_argument("--scheduler", choices=list(SCHEDULERS), default=None,
                   help="the sampler, for every model (default: each model's own, 1000-step ancestral)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="sampling steps (default T)")
    p.add_argument("--seed", type=int, default=0, help="sample seed of the conditional models (image i: seed + i)")
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--scheduler_from", default=None, help="a pipeline folder whose scheduler/ checkpoints use")
    p.add_argument("--metric", choices=METRICS, default="digits",
                   help="the offline metric: digits (8x8 models), mnist (28x28 models of --dataset_name mnist)")
    p.add_argument("--target", type=float, default=None,
                   help="the accuracy goal (default: the metric's, digits 0.95, mnist 0.98)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--merge", nargs="+", default=None, help="class_conditional.json files of earlier runs to combine "
                   "(no sampling)")
    p.add_argument("--output_dir", default="outputs/class_conditional")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()
    if args.merge:
        parts = []
        for path in args.merge:
            with open(path) as f:
                parts.append(json.load(f))
        rows = [r | {"per_class_accuracy": {int(k): v for k, v in r["per_class_accuracy"].items()}}
                for part in parts for r in part["rows"]]
        baselines = [part["baseline"] for part in parts if part.get("baseline")]
        measured = {"rows": rows, "baseline": baselines[0] if baselines else None,
                    "sampler": next(part["sampler"] for part in parts if part.get("sampler")), "merged": args.merge}
    else:
        measured = measure(args)
    rows = measured["rows"]
    report = {"args": vars(args)} | measured
    if rows:
        seeds = sorted({r["seed"] for r in rows})
        report |= report_tables(rows, measured["baseline"], measured["sampler"], args.target, args.output_dir,
                                f"class-conditional {rows[0].get('metric', 'digits')}, training seeds {seeds}, "
                                f"{rows[0]['num_samples']} "
                                f"samples per scale, {measured['sampler']}")
    report["seconds"] = round(time.time() - start, 1)
    path = os.path.join(args.output_dir, "class_conditional.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {path} ({report['seconds']} s)")


if __name__ == "__main__":
    main()

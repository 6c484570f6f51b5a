"""The training-recipe search of issue 19: variants of the digits recipe, each trained with several seeds on the same
budget of training images, scored with the digits metric (version 2: NUM_SAMPLES samples of SAMPLER@STEPS against
all 1,797 digits, with the real-data floor at the same N; ``ddpm_hf.evaluation.digits``).

Each VARIANT is NAME=FLAGS: ``ddpm-hf train`` flags changed from the digits recipe, e.g.

    python benchmarks/recipe_search.py --output_dir outputs/search --seeds 0 1 2 --variants \\
        'base=' 'minsnr5=--snr_gamma 5' 'v=--prediction_type v_prediction' 'ema9995=--ema_max_decay 0.9995'
    python benchmarks/recipe_search.py --output_dir outputs/search --table     # the table of what is finished
    python benchmarks/recipe_search.py --output_dir outputs/search --table --variants 'base=' \
        --curve docs/recipe_search_curve.png      # and FD against training seconds (intermediate models scored)

The digits recipe changed twice on 2026-12-03 with this search's results: Adam beta1 0.95 -> 0.9, then the UNet
cpu-8 for 1,400 steps -> cpu-8-small for 3,000 (about the same training time). A variant is a change to the recipe
as it is when it runs: the earlier recipes are ``'b095=--adam_beta1 0.95 --unet_preset cpu-8'`` and
``'beta09=--unet_preset cpu-8'``, at ``--images 179200`` for their full budget.

Run NAME, seed S is ``ddpm-hf train --seed S --output_dir OUTPUT_DIR/NAME/sS --max_train_steps IMAGES/BATCH FLAGS``
(BATCH: the variant's --train_batch_size, else the recipe's 128; IMAGES: --images, make demo's 3,000 x 128 by
default), one process with --threads threads. A run whose metrics.json exists is not trained again and its score is
cached, so an interrupted search resumes where it stopped and several processes can share OUTPUT_DIR with disjoint
variants. Writes OUTPUT_DIR/NAME/sS/search.json per run and prints a markdown table: flags, seed, training seconds,
images seen, FD per seed, mean +- std, mean minus the floor, and that distance against the variant named first.
Training seconds are only comparable between runs made side by side on an otherwise idle machine.

A variant whose FLAGS start with ``compare_digits.py`` is the plain diffusers loop of that script (this folder's;
issue 19 part 2) with the flags that follow, e.g. the tuned loop at make demo's wall time on a quiet machine:

    'plain=compare_digits.py --steps 1478 --lr 1e-3 --batch_size 128 --warmup 100'

(without --steps or --budget it trains IMAGES / --batch_size steps); its DDPMPipeline is scored the same way.

Every run's samples are also checked for copying: the median and 10th-percentile pixel distance (L2 over the 64
pixels in [0, 1]) from each sample to its nearest training digit, beside the same for the 180 held-out digits (real
digits the model never saw). Samples much nearer to the training digits than held-out digits are reproduced training
digits, which would lower the FD without being better samples. And a class check: the digits classifier's mean max
class probability over the samples (its confidence: malformed or ambiguous digits lower it) and the class balance
of its predictions (the digits metric's ``digits_confidence`` and ``digits_class_balance``), beside the 180
held-out digits'. The confidence still separates models once the FD reaches its floor.

Half the budget (the cosine LR and the EMA warm-up then span the shorter run) puts a recipe above the floor, where
the FD tells variants apart, in half the time: ``--images 89600`` (700 steps) for the cpu-8 recipes, whose full
budget reaches the floor; ``--images 193536`` (1,512 steps) is cpu-8-small's share of the same wall time:

    python benchmarks/recipe_search.py --output_dir outputs/half --images 193536 --seeds 0 1 2 --variants 'base='
"""

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys

import numpy as np

from sampler_quality import samples, score, scorer  # this folder's: the same sampling, seeding and metric

DEMO_IMAGES = 3000 * 128  # make demo: the digits recipe's 3,000 steps of batch 128 (1,400 of cpu-8 before)


def parse_variant(text):
    """NAME=FLAGS -> (name, [flag, ...])."""
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise SystemExit(f"a variant is NAME=FLAGS (NAME without '/'), got {text!r}")
    return name, shlex.split(flags)


PLAIN = "compare_digits.py"  # FLAGS' first word for a variant trained by the plain diffusers loop


def is_plain(flags):
    """Whether a variant is trained by the plain diffusers loop (compare_digits.py) instead of ``ddpm-hf train``."""
    return flags[:1] == [PLAIN]


def flag_value(flags, name):
    """The value of ``--name`` among ``flags`` (``--name V`` or ``--name=V``), else None."""
    for i, flag in enumerate(flags):
        if flag == name:
            return flags[i + 1]
        if flag.startswith(name + "="):
            return flag.split("=", 1)[1]
    return None


def batch_size(flags):
    """The training batch of a variant: its --train_batch_size (--batch_size for the plain loop), else the digits
    recipe's 128 (the plain loop's own default, train_unconditional.py's 16)."""
    if is_plain(flags):
        return int(flag_value(flags, "--batch_size") or 16)
    return int(flag_value(flags, "--train_batch_size") or 128)


def train(name, flags, seed, images, output_dir, threads, bits_per_dim=False):
    """Train run NAME, seed SEED (once): its folder. Without ``bits_per_dim`` the held-out bound is skipped (about
    5 minutes of one core for the 180 test digits, more than the training)."""
    folder = os.path.join(output_dir, name, f"s{seed}")
    if os.path.isfile(os.path.join(folder, "metrics.json")):
        return folder
    steps = -(-images // batch_size(flags))
    if is_plain(flags):  # the plain loop starts over when interrupted (it writes no checkpoint)
        budget = [] if flag_value(flags, "--steps") or flag_value(flags, "--budget") else ["--steps", str(steps)]
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), PLAIN), "--seed", str(seed),
               "--output_dir", folder, "--no_bits_per_dim", *budget, *flags[1:]]
        print(f"{name} seed {seed}: {shlex.join([PLAIN, *cmd[2:]])}", flush=True)
        subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        return folder
    cmd = [sys.executable, "-m", "ddpm_hf.cli", "train", "--seed", str(seed), "--output_dir", folder,
           "--max_train_steps", str(steps), "--logger", "none", *([] if bits_per_dim else ["--eval_split", ""]),
           *flags]
    if os.path.isdir(folder):  # an interrupted run: continue it from its last checkpoint
        cmd += ["--resume_from_checkpoint", "latest"]
    print(f"{name} seed {seed}: {shlex.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return folder


def evaluate(folder, flags, run, num_samples, sampling_batch, parts):
    """The run's FD (RUN = SAMPLER@STEPS samples, seed 0 of sampler_quality's seeding) and its training record."""
    path = os.path.join(folder, "search.json")
    pipeline = os.path.join(folder, "pipeline") if is_plain(flags) else folder
    if os.path.isfile(path):
        cached = json.load(open(path))
        if (cached["sampler"], cached["num_samples"]) == (run, num_samples) and "nearest_train" in cached:
            if "class_check" not in cached:  # a run scored before the class check: its samples are cached
                images, _, _ = samples(pipeline, "run", run, 0, num_samples, sampling_batch, folder)
                cached["class_check"] = class_check(images, parts[1])
                with open(path, "w") as f:
                    json.dump(cached, f, indent=2)
            return cached
    images, calls, seconds = samples(pipeline, "run", run, 0, num_samples, sampling_batch, folder)
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    result = {"flags": shlex.join(flags), "sampler": run, "num_samples": num_samples, "fd": score(images, parts),
              "calls": calls, "nearest_train": nearest_train_distances(images),
              "class_check": class_check(images, parts[1]),
              "train_seconds": metrics["train_seconds"], "images_seen": metrics["images_seen"],
              "steps": metrics["steps"], "bits_per_dim": metrics.get("bits_per_dim")}
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def intermediate_models(folder, flags):
    """[(step, training seconds, pipeline folder)] of a run's saved intermediate models: the plain loop's
    pipeline-STEP folders (--save_steps), or our checkpoint-STEP's EMA UNet (else its raw one) assembled into a
    pipeline folder curve-STEP beside the run's scheduler."""
    if is_plain(flags):
        saves = json.load(open(os.path.join(folder, "metrics.json"))).get("saves", [])
        return [(s["step"], s["seconds"], os.path.join(folder, f"pipeline-{s['step']}")) for s in saves]
    seconds = {}
    with open(os.path.join(folder, "history.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            seconds[record["step"]] = record["seconds"]
    models = []
    for checkpoint in sorted(glob.glob(os.path.join(folder, "checkpoint-*")), key=lambda c: int(c.rsplit("-", 1)[1])):
        step = int(checkpoint.rsplit("-", 1)[1])
        unet = next(u for u in ("unet_ema", "unet") if os.path.isdir(os.path.join(checkpoint, u)))
        curve = os.path.join(folder, f"curve-{step}")
        os.makedirs(curve, exist_ok=True)
        for name in ("model_index.json", "scheduler"):
            if not os.path.lexists(os.path.join(curve, name)):
                os.symlink(os.path.join("..", name), os.path.join(curve, name))
        if not os.path.lexists(os.path.join(curve, "unet")):
            os.symlink(os.path.join("..", os.path.basename(checkpoint), unet), os.path.join(curve, "unet"))
        models.append((step, seconds[step], curve))
    return models


def curve(folder, flags, run, num_samples, sampling_batch, parts):
    """FD of RUN samples from each intermediate model and the final one: [{step, seconds, fd}] (cached in
    search.json)."""
    path = os.path.join(folder, "search.json")
    result = json.load(open(path))
    if "curve" not in result:
        points = []
        for step, seconds, model in intermediate_models(folder, flags):
            images, _, _ = samples(model, f"step{step}", run, 0, num_samples, sampling_batch, folder)
            points.append({"step": step, "seconds": seconds, "fd": score(images, parts)})
        points.append({"step": result["steps"], "seconds": result["train_seconds"], "fd": result["fd"]})
        result["curve"] = points
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    return result["curve"]


def plot_curves(output_dir, floor, order, path, sampler, num_samples):
    """Mean FD over seeds against mean training seconds, one line per variant with a curve, the floor as a band."""
    from ddpm_hf.evaluation.plots import plot_quality_against_calls

    lines = {}
    for name in order:
        results = [json.load(open(p)) for p in glob.glob(os.path.join(output_dir, name, "s*", "search.json"))]
        curves = [r["curve"] for r in results if "curve" in r]
        if curves:
            n = min(len(c) for c in curves)
            label = f"{name} ({len(curves)} seed{'s' * (len(curves) > 1)})"
            lines[label] = [(np.mean([c[i]["seconds"] for c in curves]), np.mean([c[i]["fd"] for c in curves]))
                            for i in range(n)]
    plot_quality_against_calls(lines, path, f"digits FD of {sampler} samples against training time",
                               f"digits FD ({num_samples:,} samples)",
                               floor=(floor["fd_floor"], floor["fd_floor_std"]), xlabel="training seconds",
                               xscale="linear")
    print(f"wrote {path}")


def nearest_train_distances(images):
    """Median and 10th percentile of the L2 pixel distance (64 pixels in [0, 1]) from each image (uint8
    (N, 1, 8, 8)) to its nearest training digit."""
    import torch

    from ddpm_hf.evaluation.digits import digits_arrays, pixels

    train_digits = pixels(digits_arrays("train")[0]).flatten(1)
    nearest = torch.cdist(pixels(torch.as_tensor(images)).flatten(1), train_digits).min(dim=1).values.numpy()
    return {"median": float(np.median(nearest)), "p10": float(np.percentile(nearest, 10))}


def class_check(images, classifier):
    """The digits metric's class statistics of images (uint8 (N, 1, 8, 8)): the classifier's mean max class
    probability and the class balance (``ddpm_hf.evaluation.digits.class_statistics``)."""
    from ddpm_hf.evaluation.digits import class_statistics

    stats = class_statistics(classifier.probabilities(images))
    return {"confidence": stats["digits_confidence"], "class_balance": stats["digits_class_balance"]}


def table(output_dir, floor, order, classifier):
    """Markdown rows of every finished run under OUTPUT_DIR, grouped by variant (``order`` first)."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "*", "s*", "search.json"))):
        name = path.split(os.sep)[-3]
        rows.setdefault(name, []).append((int(path.split(os.sep)[-2][1:]), json.load(open(path))))
    names = [n for n in order if n in rows] + sorted(n for n in rows if n not in order)
    if not names:
        return "no finished run"
    from ddpm_hf.evaluation.digits import digits_arrays

    base = np.mean([r["fd"] for _, r in rows[names[0]]]) - floor["fd_floor"]
    held_out = nearest_train_distances(digits_arrays("test")[0])
    held_out_classes = class_check(digits_arrays("test")[0], classifier)
    lines = [f"Real-data floor at N = {rows[names[0]][0][1]['num_samples']}: {floor['fd_floor']:.3f} +- "
             f"{floor['fd_floor_std']:.3f}. Nearest training digit of the 180 held-out digits: median "
             f"{held_out['median']:.3f}, 10th percentile {held_out['p10']:.3f}; their classifier confidence "
             f"{held_out_classes['confidence']:.3f}, class balance {held_out_classes['class_balance']:.3f}.", "",
             "| variant | flags | seeds | train s (mean) | images seen | FD per seed | mean +- std | minus floor | / "
             f"{names[0]}'s distance | nearest training digit, median / p10 | classifier confidence per seed | "
             "class balance |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        runs = [r for _, r in sorted(rows[name])]
        fds = [r["fd"] for r in runs]
        mean, std = np.mean(fds), (np.std(fds, ddof=1) if len(fds) > 1 else float("nan"))
        # a ratio of distances means nothing once the base is at or below the floor
        ratio = f"{(mean - floor['fd_floor']) / base:.2f}" if base > 0 else "(base at the floor)"
        nearest = " / ".join(f"{np.mean([r['nearest_train'][k] for r in runs]):.3f}" for k in ("median", "p10"))
        lines.append(f"| {name} | `{runs[0]['flags'] or '(the recipe)'}` | {', '.join(str(s) for s, _ in sorted(rows[name]))} | "
                     f"{np.mean([r['train_seconds'] for r in runs]):.0f} | {runs[0]['images_seen']:,} | "
                     f"{' / '.join(f'{v:.3f}' for v in fds)} | {mean:.3f} +- {std:.3f} | {mean - floor['fd_floor']:.3f} | "
                     f"{ratio} | {nearest} | {per_run(runs, 'confidence')} | {per_run(runs, 'class_balance')} |")
    return "\n".join(lines)


def per_run(runs, key):
    """The runs' class-check value KEY, 3 decimals, one per run ('-' for a run scored without it)."""
    return " / ".join(f"{r['class_check'][key]:.3f}" if "class_check" in r else "-" for r in runs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=[], help="NAME=FLAGS ... (the first is the base of the ratios)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--images", type=int, default=DEMO_IMAGES, help="training images per run (default: make demo's)")
    p.add_argument("--sampler", default="dpmsolver-sde@20", help="SAMPLER@STEPS the runs are scored with")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=500, help="sampling batch")
    p.add_argument("--threads", type=int, default=1, help="threads per training process")
    p.add_argument("--output_dir", default="outputs/recipe_search")
    p.add_argument("--bits_per_dim", action="store_true", help="also the held-out bits/dim of every run (slow)")
    p.add_argument("--table", action="store_true",
                   help="no training: score the finished runs (cached) and print their table")
    p.add_argument("--curve", metavar="PNG", help="also score every run's intermediate models (our checkpoints, the "
                   "plain loop's --save_steps) and plot FD against training seconds per variant to PNG")
    args = p.parse_args()

    import torch

    from ddpm_hf.evaluation.digits import real_floor

    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in args.variants]
    parts = scorer()
    floor = real_floor(parts[0], args.num_samples, draws=20, kid=False)
    for name, flags in variants:
        for seed in args.seeds:
            folder = os.path.join(args.output_dir, name, f"s{seed}")
            if args.table:  # score finished runs only (cached; fills in what older runs were scored without)
                if os.path.isfile(os.path.join(folder, "metrics.json")):
                    evaluate(folder, flags, args.sampler, args.num_samples, args.batch_size, parts)
            else:
                folder = train(name, flags, seed, args.images, args.output_dir, args.threads, args.bits_per_dim)
                result = evaluate(folder, flags, args.sampler, args.num_samples, args.batch_size, parts)
                print(f"{name} seed {seed}: FD {result['fd']:.3f} ({result['train_seconds']:.0f} s of training)",
                      flush=True)
    if args.curve:
        for name, flags in variants:
            for seed in args.seeds:
                folder = os.path.join(args.output_dir, name, f"s{seed}")
                if os.path.isfile(os.path.join(folder, "search.json")):
                    curve(folder, flags, args.sampler, args.num_samples, args.batch_size, parts)
        plot_curves(args.output_dir, floor, [name for name, _ in variants], args.curve, args.sampler, args.num_samples)
    print(table(args.output_dir, floor, [name for name, _ in variants], parts[1]))


if __name__ == "__main__":
    main()

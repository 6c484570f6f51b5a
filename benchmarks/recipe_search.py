"""The training-recipe search of issue 19: variants of the digits recipe, each trained with several seeds on the same
budget of training images, scored with the digits metric (version 2: NUM_SAMPLES samples of SAMPLER@STEPS against
all 1,797 digits, with the real-data floor at the same N; ``ddpm_hf.evaluation.digits``).

Each VARIANT is NAME=FLAGS: ``ddpm-hf train`` flags changed from the digits recipe, e.g.

    python benchmarks/recipe_search.py --output_dir outputs/search --seeds 0 1 2 --variants \\
        'base=' 'minsnr5=--snr_gamma 5' 'v=--prediction_type v_prediction' 'ema9995=--ema_max_decay 0.9995'
    python benchmarks/recipe_search.py --output_dir outputs/search --table     # the table of what is finished

Run NAME, seed S is ``ddpm-hf train --seed S --output_dir OUTPUT_DIR/NAME/sS --max_train_steps IMAGES/BATCH FLAGS``
(BATCH: the variant's --train_batch_size, else the recipe's 128; IMAGES: --images, make demo's 1,400 x 128 by
default), one process with --threads threads. A run whose metrics.json exists is not trained again and its score is
cached, so an interrupted search resumes where it stopped and several processes can share OUTPUT_DIR with disjoint
variants. Writes OUTPUT_DIR/NAME/sS/search.json per run and prints a markdown table: flags, seed, training seconds,
images seen, FD per seed, mean +- std, mean minus the floor, and that distance against the variant named first.
Training seconds are only comparable between runs made side by side on an otherwise idle machine.
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

DEMO_IMAGES = 1400 * 128  # make demo: the digits recipe's 1,400 steps of batch 128


def parse_variant(text):
    """NAME=FLAGS -> (name, [flag, ...])."""
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise SystemExit(f"a variant is NAME=FLAGS (NAME without '/'), got {text!r}")
    return name, shlex.split(flags)


def batch_size(flags, default=128):
    """The --train_batch_size among ``flags``, else the digits recipe's."""
    for i, flag in enumerate(flags):
        if flag == "--train_batch_size":
            return int(flags[i + 1])
        if flag.startswith("--train_batch_size="):
            return int(flag.split("=", 1)[1])
    return default


def train(name, flags, seed, images, output_dir, threads, bits_per_dim=False):
    """Train run NAME, seed SEED (once): its folder. Without ``bits_per_dim`` the held-out bound is skipped (about
    5 minutes of one core for the 180 test digits, more than the training)."""
    folder = os.path.join(output_dir, name, f"s{seed}")
    if os.path.isfile(os.path.join(folder, "metrics.json")):
        return folder
    steps = -(-images // batch_size(flags))
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
    if os.path.isfile(path):
        cached = json.load(open(path))
        if (cached["sampler"], cached["num_samples"]) == (run, num_samples):
            return cached
    images, calls, seconds = samples(folder, "run", run, 0, num_samples, sampling_batch, folder)
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    result = {"flags": shlex.join(flags), "sampler": run, "num_samples": num_samples, "fd": score(images, parts),
              "calls": calls,
              "train_seconds": metrics["train_seconds"], "images_seen": metrics["images_seen"],
              "steps": metrics["steps"], "bits_per_dim": metrics.get("bits_per_dim")}
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def table(output_dir, floor, order):
    """Markdown rows of every finished run under OUTPUT_DIR, grouped by variant (``order`` first)."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "*", "s*", "search.json"))):
        name = path.split(os.sep)[-3]
        rows.setdefault(name, []).append((int(path.split(os.sep)[-2][1:]), json.load(open(path))))
    names = [n for n in order if n in rows] + sorted(n for n in rows if n not in order)
    if not names:
        return "no finished run"
    base = np.mean([r["fd"] for _, r in rows[names[0]]]) - floor["fd_floor"]
    lines = [f"Real-data floor at N = {rows[names[0]][0][1]['num_samples']}: {floor['fd_floor']:.3f} +- "
             f"{floor['fd_floor_std']:.3f}", "",
             "| variant | flags | seeds | train s (mean) | images seen | FD per seed | mean +- std | minus floor | / "
             f"{names[0]}'s distance |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        fds = [r["fd"] for _, r in sorted(rows[name])]
        mean, std = np.mean(fds), (np.std(fds, ddof=1) if len(fds) > 1 else float("nan"))
        lines.append(f"| {name} | `{rows[name][0][1]['flags'] or '(the recipe)'}` | {', '.join(str(s) for s, _ in sorted(rows[name]))} | "
                     f"{np.mean([r['train_seconds'] for _, r in rows[name]]):.0f} | {rows[name][0][1]['images_seen']:,} | "
                     f"{' / '.join(f'{v:.3f}' for v in fds)} | {mean:.3f} +- {std:.3f} | {mean - floor['fd_floor']:.3f} | "
                     f"{(mean - floor['fd_floor']) / base:.2f} |")
    return "\n".join(lines)


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
    p.add_argument("--table", action="store_true", help="only print the table of the finished runs")
    args = p.parse_args()

    import torch

    from ddpm_hf.evaluation.digits import real_floor

    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in args.variants]
    parts = scorer()
    floor = real_floor(parts[0], args.num_samples, draws=20, kid=False)
    if not args.table:
        for name, flags in variants:
            for seed in args.seeds:
                folder = train(name, flags, seed, args.images, args.output_dir, args.threads, args.bits_per_dim)
                result = evaluate(folder, flags, args.sampler, args.num_samples, args.batch_size, parts)
                print(f"{name} seed {seed}: FD {result['fd']:.3f} ({result['train_seconds']:.0f} s of training)",
                      flush=True)
    print(table(args.output_dir, floor, [name for name, _ in variants]))


if __name__ == "__main__":
    main()

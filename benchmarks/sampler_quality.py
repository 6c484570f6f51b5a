"""Sample quality against UNet calls, one line per sampler (issue 17 sec. 3): an offline classifier metric of
NUM_SAMPLES samples per seed (the digits metric, ``ddpm_hf.evaluation.digits``, against all 1,797 digits; or with
``--metric mnist`` the MNIST one, ``ddpm_hf.evaluation.mnist``, against the 500 held-out digits), with the
real-data floor at the same N, for our ancestral chain and diffusers' schedulers swapped in with ``from_config``.

Each RUN is SAMPLER@STEPS[:KEY=VALUE,...] (SAMPLER a name of ``ddpm_hf.sampling.SCHEDULERS``, or ``own`` for the
saved pipeline's scheduler, e.g. a distilled student's, or ``2s-path`` for K steps of the teacher's DPM-Solver++(2S)
on the K-step trailing grid, 2K calls: the path the first round of progressive distillation teaches a K/2-step
student, ``ddpm_hf.distillation.consistency.teacher_ode_step``; the optional settings
override the sampler's config, JSON values), e.g. ``ddpm@1000 dpmsolver++@20 dpmsolver++@20:timestep_spacing="trailing"``.
UNet calls are counted (a forward hook), not assumed: Heun's N steps cost 2N - 1 calls. Seed s draws image i with
seed ``s * 100000 + i`` (seeds share no image). Samples are cached as .npy in OUTPUT_DIR/samples, so an interrupted
run resumes where it stopped; several processes with disjoint RUNs can share OUTPUT_DIR (one core each), and
``--merge`` joins their JSON files into one table and one plot.

    python benchmarks/sampler_quality.py outputs/demo --label learned --seeds 0 1 2 \\
        --runs ddpm@100 ddpm@50 ddpm@25 ddim@20 ddim@10 dpmsolver++@20 dpmsolver++@10 unipc@10 unipc@5 \\
        --output_dir outputs/sampler_quality/a
    python benchmarks/sampler_quality.py --merge outputs/sampler_quality/*/sampler_quality.json \\
        --plot docs/sampler_quality.png

Prints a markdown table (FD per seed, mean +- std, / floor, ratio to the ancestral run with the most steps,
seconds per 1,000 samples and the speed-up against that ancestral run; seconds measured in the runs merged, so
compare them only between runs made side by side) and writes OUTPUT_DIR/sampler_quality.json.
"""

import argparse
import glob
import json
import os
import time

import numpy as np
import torch

SEED_STRIDE = 100_000


def parse_run(run):
    """SAMPLER@STEPS[:KEY=VALUE,...] -> (sampler, steps, {key: value})."""
    head, _, settings = run.partition(":")
    sampler, steps = head.split("@")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    return sampler, int(steps), overrides


def load(folder, sampler, overrides):
    """The saved pipeline at ``folder`` with the sampler ``sampler`` swapped in (its config changed by
    ``overrides``), and a UNet call counter."""
    from ddpm_hf import DDPMHFPipeline
    from ddpm_hf.sampling import use_scheduler

    pipe = DDPMHFPipeline.from_pretrained(folder)
    if sampler != "own":  # "own": the saved pipeline's scheduler (a distilled student's LCMScheduler)
        pipe = use_scheduler(pipe, sampler)
    if overrides:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    calls = [0]
    pipe.unet.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return pipe, calls


def samples(folder, label, run, seed, num_samples, batch_size, output_dir):
    """uint8 (N, 1, 8, 8) samples of RUN, UNet calls per image batch and seconds (cached)."""
    from ddpm_hf.sampling import generate_uint8

    sampler, steps, overrides = parse_run(run)
    name = "".join(c if c.isalnum() or c in "+-_@." else "_" for c in run)
    path = os.path.join(output_dir, "samples", f"{label}-{name}-n{num_samples}-seed{seed}.npz")
    if os.path.isfile(path):
        cached = np.load(path)
        return cached["images"], int(cached["calls"]), float(cached["seconds"])
    pipe, calls = load(folder, "own" if sampler == "2s-path" else sampler, overrides)
    if sampler == "2s-path":
        images, seconds = two_s_path(pipe, num_samples, batch_size, steps, seed * SEED_STRIDE)
    else:
        images, seconds = generate_uint8(pipe, num_samples, batch_size, steps, seed * SEED_STRIDE)
    calls_per_batch = calls[0] // -(-num_samples // batch_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, images=images.numpy(), calls=calls_per_batch, seconds=seconds)
    return images.numpy(), calls_per_batch, seconds


@torch.no_grad()
def two_s_path(pipe, num_images, batch_size, steps, seed):
    """uint8 (N, C, H, W) samples of ``steps`` DPM-Solver++(2S) steps of the pipeline's (unconditional) model on the
    trailing grid (progressive distillation's first-round target path), from the noise the pipeline would draw
    (image i: its own generator seeded seed + i), and the seconds it took."""
    from diffusers.utils.torch_utils import randn_tensor

    from ddpm_hf.distillation.consistency import teacher_ode_step
    from ddpm_hf.distillation.progressive import trailing_timesteps
    from ddpm_hf.images import to_uint8

    T = pipe.scheduler.config.num_train_timesteps
    grid = trailing_timesteps(steps, T)
    unet, size = pipe.unet, pipe.unet.config.sample_size
    start, images = time.time(), []
    for first in range(0, num_images, batch_size):
        n = min(batch_size, num_images - first)
        generators = [torch.Generator().manual_seed(seed + first + i) for i in range(n)]
        x = randn_tensor((n, unet.config.in_channels, size, size), generator=generators)
        for t in grid.tolist():
            x = teacher_ode_step(unet, pipe.scheduler, x, torch.full((n,), t), torch.full((n,), t - T // steps))
        images.append(pipe._to_output(x, "np"))
    seconds = time.time() - start
    return torch.from_numpy(to_uint8(np.concatenate(images)).transpose(0, 3, 1, 2).copy()), seconds


def score(images, parts):
    from ddpm_hf.evaluation.features import frechet_distance

    reference, classifier, w = parts
    return float(frechet_distance(reference, classifier.features(images) @ w))


def scorer(metric="digits"):
    """The metric's parts for ``score``: the whitened reference features, the classifier, the whitening. digits: all
    1,797 digits, whitened by them; mnist: the 500 held-out MNIST digits, whitened by the 4,500 training digits
    (``ddpm_hf.evaluation.mnist``)."""
    if metric == "mnist":
        from ddpm_hf.evaluation.mnist import load_mnist_classifier, mnist_arrays, whitening

        classifier = load_mnist_classifier()
        w = whitening(classifier.features(mnist_arrays("train")[0]))
        return classifier.features(mnist_arrays("test")[0]) @ w, classifier, w
    from ddpm_hf.evaluation.digits import digits_arrays, load_digits_classifier, whitening

    classifier = load_digits_classifier()
    reference = classifier.features(digits_arrays("all")[0])
    w = whitening(reference)
    return reference @ w, classifier, w


def real_data_floor(metric, parts, num_samples):
    """The metric's floor at ``num_samples``: digits from disjoint splits of the reference; mnist from draws of the
    training digits (independent of the held-out reference)."""
    if metric == "mnist":
        from ddpm_hf.evaluation.mnist import mnist_arrays, real_floor

        pool = parts[1].features(mnist_arrays("train")[0]) @ parts[2]
        floor = real_floor(pool, parts[0], num_samples, draws=20)
        return {k: floor[k] for k in ("fd_floor", "fd_floor_std")}
    from ddpm_hf.evaluation.digits import real_floor

    return real_floor(parts[0], num_samples, draws=20, kid=False)


def measure(args):
    parts = scorer(args.metric)
    floor = real_data_floor(args.metric, parts, args.num_samples)
    report = {"model": args.label, "num_samples": args.num_samples, "floor": floor, "runs": []}
    os.makedirs(args.output_dir, exist_ok=True)
    for run in args.runs:
        sampler, steps, overrides = parse_run(run)
        if overrides:
            sampler += " " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        entry = {"model": args.label, "sampler": sampler, "steps": steps, "seeds": [], "fd": [], "seconds": []}
        for seed in args.seeds:
            images, calls, seconds = samples(args.model, args.label, run, seed, args.num_samples, args.batch_size,
                                             args.output_dir)
            entry["seeds"].append(seed)
            entry["fd"].append(score(images, parts))
            entry["seconds"].append(seconds)
            entry["calls"] = calls
            print(f"{args.label} {run} seed {seed}: FD {entry['fd'][-1]:.3f}, {calls} UNet calls, {seconds:.0f} s",
                  flush=True)
            report["runs"] = [r for r in report["runs"] if (r["model"], r["sampler"], r["steps"]) !=
                              (args.label, sampler, steps)] + [entry]
            with open(os.path.join(args.output_dir, "sampler_quality.json"), "w") as f:
                json.dump(report, f, indent=2)
    return report


def merge(paths):
    """One report from several: the runs of one model, sampler (with its overrides) and step count joined into one
    entry, seeds in order (a seed measured twice counted once)."""
    reports = [json.load(open(p)) for p in paths]
    if len({(r["num_samples"], r["floor"]["fd_floor"]) for r in reports}) > 1:
        raise SystemExit("the files were measured with different sample counts or floors")
    joined = {}
    for run in (r for report in reports for r in report["runs"]):
        entry = joined.setdefault((run["model"], run["sampler"], run["steps"]),
                                  dict(run, seeds=[], fd=[], seconds=[]))
        for seed, fd, seconds in zip(run["seeds"], run["fd"], run["seconds"]):
            if seed not in entry["seeds"]:
                entry["seeds"].append(seed)
                entry["fd"].append(fd)
                entry["seconds"].append(seconds)
    for entry in joined.values():
        order = np.argsort(entry["seeds"])
        for key in ("seeds", "fd", "seconds"):
            entry[key] = [entry[key][i] for i in order]
    return {"num_samples": reports[0]["num_samples"], "floor": reports[0]["floor"], "runs": list(joined.values())}


def table(report):
    floor = report["floor"]["fd_floor"]
    lines = [f"Real-data floor at N = {report['num_samples']}: {floor:.3f} +- {report['floor']['fd_floor_std']:.3f}",
             "", "| model | sampler @ steps | UNet calls | FD per seed | mean +- std | / floor | "
             "/ ancestral with most steps | s per 1,000 samples (one core) | times faster than it |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in report["runs"]):
        runs = [r for r in report["runs"] if r["model"] == model]
        ancestral = max((r for r in runs if r["sampler"] == "ddpm"), key=lambda r: r["steps"], default=None)
        reference = np.mean(ancestral["fd"]) if ancestral else float("nan")
        reference_seconds = np.mean(ancestral["seconds"]) if ancestral else float("nan")
        for r in sorted(runs, key=lambda r: (r["sampler"] != "ddpm", r["sampler"], -r["steps"])):
            mean = np.mean(r["fd"])
            std = f"{np.std(r['fd'], ddof=1):.3f}" if len(r["fd"]) > 1 else "-"
            per_thousand = np.mean(r["seconds"]) * 1000 / report["num_samples"]
            lines.append(f"| {model} | {r['sampler']} @ {r['steps']} | {r['calls']} | "
                         f"{' / '.join(f'{v:.3f}' for v in r['fd'])} | {mean:.3f} +- {std} | {mean / floor:.2f} | "
                         f"{mean / reference:.2f} | {per_thousand:.0f} | {reference_seconds / np.mean(r['seconds']):.1f} |")
    return "\n".join(lines)


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in report["runs"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), dpi=120, squeeze=False, sharey=True)
    floor, floor_std = report["floor"]["fd_floor"], report["floor"]["fd_floor_std"]
    for ax, model in zip(axes[0], models):
        runs = [r for r in report["runs"] if r["model"] == model and " " not in r["sampler"]]  # no overrides
        for sampler in dict.fromkeys(r["sampler"] for r in runs):
            points = sorted((r["calls"], np.mean(r["fd"]), np.std(r["fd"], ddof=1) if len(r["fd"]) > 1 else 0)
                            for r in runs if r["sampler"] == sampler)
            x, y, e = zip(*points)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label="ancestral (ours)" if sampler == "ddpm" else sampler)
        ax.axhspan(floor - floor_std, floor + floor_std, color="0.85", label="real-data floor +- std")
        ax.set_xscale("log")
        ax.set_xlabel("UNet calls per sample")
        ax.set_title(f"{model} model", fontsize=10)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"digits FD ({report['num_samples']} samples; lower is better)")
    fig.suptitle("Sample quality against sampling cost, digits metric, mean +- std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"written {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="a saved pipeline folder")
    p.add_argument("--label", default="model", help="the model's name in the table and plot")
    p.add_argument("--metric", choices=("digits", "mnist"), default="digits",
                   help="the offline metric: digits (8x8 digits models) or mnist (28x28 MNIST models)")
    p.add_argument("--runs", nargs="+", default=["ddpm@100", "dpmsolver++@20"], help="SAMPLER@STEPS ...")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--output_dir", default="outputs/sampler_quality")
    p.add_argument("--merge", nargs="+", help="sampler_quality.json files to join (no sampling)")
    p.add_argument("--plot", help="with --merge: where to write the plot (PNG; the runs without config overrides)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.merge:
        report = merge(sorted({q for pattern in args.merge for q in glob.glob(pattern)}))
        if args.plot:
            plot(report, args.plot)
    else:
        if not args.model:
            p.error("give a model folder, or --merge")
        start = time.time()
        report = measure(args)
        print(f"({time.time() - start:.0f} s)")
    print(table(report))


if __name__ == "__main__":
    main()

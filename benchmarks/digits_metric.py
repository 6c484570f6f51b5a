"""How sharp is the digits metric? Its real-data floor, its spread over seeds, and whether it separates models that
differ, measured for the metric's features (the digits CNN's hidden layer whitened by the reference,
``ddpm_hf.evaluation.digits``) and, on the same samples, for other features: the CNN's without whitening, its last
convolution block, the first version's (a scikit-learn MLP's 64-d last hidden layer) and raw pixels.

1. The floor law: FD between disjoint sets of real digits of sizes (n, m) against c (1/n + 1/m), c fitted by least
   squares (the law ``digits.real_floor`` scales its floor with); and what the overlap does (N real digits taken from
   the reference, scored against all of it).
2. Models: each MODEL is LABEL=FOLDER[:UNET_SUBFOLDER]@STEPS, e.g. ``ema-1400=outputs/demo@1000`` (a saved
   pipeline) or ``raw-1000=outputs/demo/checkpoint-1000:unet@50`` (a training checkpoint's UNet, the scheduler taken
   from ``--scheduler_from``). NUM_SAMPLES samples per seed (seed s draws image i with seed s * 100000 + i, so seeds
   share no image), cached as .npy in OUTPUT_DIR/samples; then FD per seed, mean and std over seeds, the floor at
   that N, the ratio FD / floor, and for every pair of models Welch's t over seeds, per feature kind.

    python benchmarks/digits_metric.py --output_dir outputs/digits_metric --num_samples 1000 --seeds 0 1 2 \\
        --scheduler_from outputs/demo \\
        --models ema-1400=outputs/demo@1000 ema-1400=outputs/demo@50 ema-1400=outputs/demo@10 \\
                 ema-500=outputs/demo/checkpoint-500:unet_ema@50 ema-1000=outputs/demo/checkpoint-1000:unet_ema@50 \\
                 raw-1000=outputs/demo/checkpoint-1000:unet@50
    python benchmarks/digits_metric.py --floor_only        # part 1 only, seconds

Writes OUTPUT_DIR/digits_metric.json and prints markdown tables.
"""

import argparse
import itertools
import json
import os
import time

import numpy as np
import torch

SEED_STRIDE = 100_000


def feature_kinds():
    """{name: function uint8 (N, 1, 8, 8) -> (N, D) float64}: the metric's CNN, the first version's MLP, pixels."""
    from sklearn.neural_network import MLPClassifier

    from ddpm_hf.evaluation.digits import digits_arrays, load_digits_classifier, whitening
    from ddpm_hf.evaluation.digits import pixels as digits_pixels

    cnn = load_digits_classifier()
    train_images, train_labels = digits_arrays("train")

    def flat(images):
        return torch.as_tensor(images).reshape(len(images), 64).double().numpy() / 255.0

    # the first version's recipe (CLASSIFIER_VERSION 1): pixels -> 128 -> 64 -> 10, ReLU
    mlp = MLPClassifier(hidden_layer_sizes=(128, 64), alpha=1e-3, max_iter=600, random_state=0)
    mlp.fit(flat(train_images), train_labels)

    def mlp_features(images):
        x = flat(images)
        for w, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1]):
            x = np.maximum(x @ w + b, 0.0)
        return x

    all_images, _ = digits_arrays("all")

    def whitened(fn):  # whitened by the reference, as the metric does
        w = whitening(fn(all_images))
        return lambda images: fn(images) @ w

    @torch.no_grad()
    def conv_features(images):  # the CNN's last convolution block, flattened (64 x 2 x 2), before the hidden layer
        return cnn.network.body[:-3](digits_pixels(images)).flatten(1).double().numpy()

    return {"cnn128 whitened (the metric)": whitened(cnn.features), "cnn128 raw": cnn.features,
            "cnn conv256 whitened": whitened(conv_features), "cnn conv256 raw": conv_features,
            "mlp64 raw (first version)": mlp_features, "mlp64 whitened": whitened(mlp_features), "pixels64": flat,
            "pixels64 whitened": whitened(flat)}


def floor_law(kinds, draws, seed=0):
    """FD of disjoint real splits of sizes (n, m) for each feature kind, with the fit c (1/n + 1/m)."""
    from ddpm_hf.evaluation.digits import digits_arrays
    from ddpm_hf.evaluation.features import frechet_distance

    images, _ = digits_arrays("all")
    M = len(images)
    sizes = [(200, 1597), (500, 500), (500, 1297), (800, 997), (1000, 797), (300, 300), (898, 899)]
    rng = np.random.default_rng(seed)
    out = {}
    for name, fn in kinds.items():
        features = fn(images)
        rows = []
        for n, m in sizes:
            values = []
            for _ in range(draws):
                order = rng.permutation(M)
                values.append(frechet_distance(features[order[n : n + m]], features[order[:n]]))
            rows.append({"n": n, "m": m, "fd": float(np.mean(values)), "std": float(np.std(values, ddof=1))})
        x = np.array([1 / r["n"] + 1 / r["m"] for r in rows])
        y = np.array([r["fd"] for r in rows])
        c = float((x @ y) / (x @ x))
        for r, xi in zip(rows, x):
            r["fit"] = c * xi
        # the overlap: N = 1000 real digits taken from the reference, scored against all of it
        overlapped = [frechet_distance(features, features[rng.permutation(M)[:1000]]) for _ in range(draws)]
        out[name] = {"c": c, "rows": rows, "overlap_1000": float(np.mean(overlapped)),
                     "predicted_1000_vs_all": c * (1 / 1000 + 1 / M)}
    return out


def parse_model(spec):
    label, rest = spec.split("=", 1)
    where, steps = rest.rsplit("@", 1)
    folder, _, subfolder = where.partition(":")
    return label, folder, subfolder or None, int(steps)


def samples_for(spec, scheduler_from, num_samples, seed, output_dir, batch_size):
    """uint8 samples (N, 1, 8, 8) of a model spec, drawn once and cached as .npy."""
    label, folder, subfolder, steps = parse_model(spec)
    path = os.path.join(output_dir, "samples", f"{label}-{steps}steps-n{num_samples}-seed{seed}.npy")
    if os.path.isfile(path):
        return np.load(path), None
    from diffusers import UNet2DModel

    from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler
    from ddpm_hf.sampling import generate_uint8

    if subfolder:
        unet = UNet2DModel.from_pretrained(folder, subfolder=subfolder)
        scheduler = DDPMHFScheduler.from_pretrained(scheduler_from, subfolder="scheduler")
        pipe = DDPMHFPipeline(unet=unet, scheduler=scheduler)
    else:
        pipe = DDPMHFPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    samples, seconds = generate_uint8(pipe, num_samples, batch_size, steps, seed * SEED_STRIDE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, samples.numpy())
    return samples.numpy(), seconds


def welch_t(a, b):
    a, b = np.asarray(a), np.asarray(b)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return float((a.mean() - b.mean()) / se) if se > 0 else float("inf")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=[])
    p.add_argument("--scheduler_from", default="outputs/demo", help="the pipeline folder whose scheduler/ checkpoint "
                   "UNets sample with")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--floor_draws", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--floor_only", action="store_true")
    p.add_argument("--output_dir", default="outputs/digits_metric")
    args = p.parse_args()

    from ddpm_hf.evaluation.digits import digits_arrays, real_floor
    from ddpm_hf.evaluation.features import frechet_distance

    torch.set_num_threads(1)
    os.makedirs(args.output_dir, exist_ok=True)
    kinds = feature_kinds()
    report = {"num_samples": args.num_samples, "seeds": args.seeds, "floor_draws": args.floor_draws}
    start = time.time()
    report["floor_law"] = law = floor_law(kinds, max(5, args.floor_draws // 2))
    print(f"## 1. The floor law (disjoint real splits, {max(5, args.floor_draws // 2)} draws each; "
          f"{time.time() - start:.0f} s)\n")
    for name, entry in law.items():
        print(f"{name}: c = {entry['c']:.4g}; 1,000 real digits taken from the reference, against all 1,797: "
              f"{entry['overlap_1000']:.3f}, against the law's independent-set prediction "
              f"{entry['predicted_1000_vs_all']:.3f}\n")
        print("| n | m | FD mean | std | c (1/n + 1/m) |\n|---|---|---|---|---|")
        for r in entry["rows"]:
            print(f"| {r['n']} | {r['m']} | {r['fd']:.3f} | {r['std']:.3f} | {r['fit']:.3f} |")
        print()
    if args.floor_only:
        _write(report, args.output_dir)
        return

    reference_images, _ = digits_arrays("all")
    reference = {name: fn(reference_images) for name, fn in kinds.items()}
    floors = {name: real_floor(reference[name], args.num_samples, draws=args.floor_draws, kid=False)
              for name in kinds}
    scores = {name: {} for name in kinds}
    timing = {}
    for spec in args.models:
        for seed in args.seeds:
            samples, seconds = samples_for(spec, args.scheduler_from, args.num_samples, seed, args.output_dir,
                                           args.batch_size)
            if seconds is not None:
                timing.setdefault(spec, []).append(round(seconds, 1))
                print(f"sampled {spec} seed {seed}: {seconds:.0f} s", flush=True)
            for name, fn in kinds.items():
                scores[name].setdefault(spec, []).append(frechet_distance(reference[name], fn(samples)))
    report.update(floors=floors, scores=scores, sampling_seconds=timing)
    n = args.num_samples
    print(f"## 2. Models, {n} samples per seed, seeds {args.seeds}, against all 1,797 digits\n")
    for name in kinds:
        floor = floors[name]
        print(f"### {name}: real-data floor at N = {n}: {floor['fd_floor']:.3f} +- {floor['fd_floor_std']:.3f}\n")
        print("| model@steps | FD per seed | mean +- std | / floor | (FD - floor) / floor std |\n|---|---|---|---|---|")
        for spec, values in scores[name].items():
            mean, std = np.mean(values), np.std(values, ddof=1) if len(values) > 1 else float("nan")
            print(f"| {spec.split('=')[0]}@{spec.rsplit('@', 1)[1]} | {' / '.join(f'{v:.3f}' for v in values)} | "
                  f"{mean:.3f} +- {std:.3f} | {mean / floor['fd_floor']:.2f} | "
                  f"{(mean - floor['fd_floor']) / floor['fd_floor_std']:.1f} |")
        if len(args.seeds) > 1:
            print("\nWelch t over seeds (row minus column):\n")
            specs = list(scores[name])
            labels = [f"{s.split('=')[0]}@{s.rsplit('@', 1)[1]}" for s in specs]
            print("| | " + " | ".join(labels) + " |\n" + "|---" * (len(specs) + 1) + "|")
            for a, la in zip(specs, labels):
                cells = [("" if a == b else f"{welch_t(scores[name][a], scores[name][b]):.1f}") for b in specs]
                print(f"| {la} | " + " | ".join(cells) + " |")
            report.setdefault("welch_t", {})[name] = {
                f"{a} vs {b}": welch_t(scores[name][a], scores[name][b]) for a, b in itertools.combinations(specs, 2)}
        print()
    _write(report, args.output_dir)


def _write(report, output_dir):
    path = os.path.join(output_dir, "digits_metric.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"written {path}")


if __name__ == "__main__":
    main()

"""Sampling speed: ``DDPMHFPipeline`` against diffusers' ``DDPMPipeline`` with the same UNet weights, scheduler
config, steps, batch and generator, interleaved in one process (medians of the repeats), and the fast paths a user
can turn on, each with its largest pixel difference from the fp32 images.

    python benchmarks/bench_pipeline.py                      # digits default + ddpm-cifar10-32 at batch 16
    python benchmarks/bench_pipeline.py --quick              # fewer steps and repeats

Also printed: the UNet's FLOPs per forward (torch.utils.flop_counter) and achieved GFLOP/s against this machine's
measured fp32 matmul rate, peak RSS of one sampling run per pipeline (a child process each), and the cost of one UNet
forward against batch size and resolution.
"""

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import time

import torch

CASES = {
    # make demo's model: cpu-8 UNet with learned variances, cosine schedule; its sample grid is 36 images
    "digits default (cpu-8, 8x8x1, learned_range, batch 36)": dict(
        preset="cpu-8", channels=1, learned=True, batch=36, steps=100,
        scheduler=dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range")),
    # the DDPM paper's CIFAR-10 network (35.7M parameters), fixed_large variances
    "ddpm-cifar10-32 (32x32x3, fixed_large, batch 16)": dict(
        preset="ddpm-cifar10-32", channels=3, learned=False, batch=16, steps=20,
        scheduler=dict(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_large")),
}


def build(case, seed=0):
    from diffusers import DDPMPipeline, DDPMScheduler

    from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler, build_unet

    torch.manual_seed(seed)
    unet = build_unet(case["preset"], channels=case["channels"], learned_variance=case["learned"]).eval()
    ours = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler(**case["scheduler"]))
    theirs = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**case["scheduler"]))
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs


def run(pipe, case, steps, seed=0):
    return pipe(batch_size=case["batch"], generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                output_type="np").images


def fast_variants(ours):
    """name -> context manager factory and UNet preparation; each restores the fp32 UNet afterwards."""
    import contextlib

    unet = ours.unet

    def channels_last():
        ours.unet = unet.to(memory_format=torch.channels_last)

    def contiguous():
        ours.unet = unet.to(memory_format=torch.contiguous_format)

    return {
        "inference_mode": (lambda: torch.inference_mode(), None, None),
        "channels_last": (contextlib.nullcontext, channels_last, contiguous),
        "bf16 autocast": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), None, None),
        "bf16 autocast + channels_last": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), channels_last,
                                          contiguous),
    }


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def matmul_gflops(n=1024, repeats=20):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def unet_flops(unet, case):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(case["batch"], case["channels"], unet.config.sample_size, unet.config.sample_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, torch.full((case["batch"],), 10)).sample
    return counter.get_total_flops()


def _peak_rss_child(name, which, steps, queue):
    ours, theirs = build(CASES[name])
    run(ours if which == "ours" else theirs, CASES[name], steps)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss_mb(name, which, steps):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_peak_rss_child, args=(name, which, steps, queue))
    p.start()
    value = queue.get()
    p.join()
    return value


def forward_scaling(quick):
    """Seconds of one UNet forward against batch size (cpu-8) and resolution (cpu-8/16/32 presets, batch 16)."""
    from ddpm_hf import build_unet

    rows = []
    for preset, batches in (("cpu-8", (1, 4, 16, 64, 256)), ("cpu-16", (16,)), ("cpu-32", (16,))):
        unet = build_unet(preset, channels=1).eval()
        size = unet.config.sample_size
        for b in batches:
            x, t = torch.randn(b, 1, size, size), torch.full((b,), 10)
            with torch.no_grad():
                unet(x, t)
                times = [timed(lambda: unet(x, t))[0] for _ in range(3 if quick else 7)]
            rows.append({"preset": preset, "resolution": size, "batch": b, "ms": 1000 * statistics.median(times),
                         "ms_per_image": 1000 * statistics.median(times) / b})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="sampling steps per run for every case (default: 100 for "
                   "the digits, 20 for cifar10; images/s scales as 1/steps, the ratios do not depend on it)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="10 steps, 3 repeats")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats = 10, 3
    torch.manual_seed(0)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(),
               "matmul_gflops": matmul_gflops(), "cases": {}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul 1024^3: "
          f"{results['matmul_gflops']:.1f} GFLOP/s; {args.repeats} repeats interleaved")
    for name, case in CASES.items():
        steps = args.steps or case["steps"]
        ours, theirs = build(case)
        reference = run(theirs, case, steps)
        same = float(abs(run(ours, case, steps) - reference).max())
        times = {"diffusers DDPMPipeline": [], "DDPMHFPipeline": []}
        variants = fast_variants(ours)
        diffs = {}
        for v, (context, prepare, restore) in variants.items():
            times[f"DDPMHFPipeline + {v}"] = []
            if prepare:
                prepare()
            with context():
                diffs[v] = float(abs(run(ours, case, steps) - reference).max())  # also the warm-up
            if restore:
                restore()
        for _ in range(args.repeats):
            times["diffusers DDPMPipeline"].append(timed(lambda: run(theirs, case, steps))[0])
            times["DDPMHFPipeline"].append(timed(lambda: run(ours, case, steps))[0])
            for v, (context, prepare, restore) in variants.items():
                if prepare:
                    prepare()
                with context():
                    times[f"DDPMHFPipeline + {v}"].append(timed(lambda: run(ours, case, steps))[0])
                if restore:
                    restore()
        base = statistics.median(times["diffusers DDPMPipeline"])
        flops = unet_flops(ours.unet, case)
        rows = {}
        for label, ts in times.items():
            med = statistics.median(ts)
            rows[label] = {"seconds": med, "images_per_second": case["batch"] / med, "ratio": base / med,
                           "gflops": flops * steps / med / 1e9,
                           "max_diff_vs_diffusers_fp32": same if label == "DDPMHFPipeline" else diffs.get(
                               label.replace("DDPMHFPipeline + ", ""), 0.0)}
        results["cases"][name] = {"unet_gflop_per_forward": flops / 1e9, "rows": rows, "steps": steps,
                                  "peak_rss_mb": {w: peak_rss_mb(name, w, min(steps, 10))
                                                  for w in ("ours", "diffusers")}}
        print(f"\n{name}, {steps} steps: UNet {flops / 1e9:.3f} GFLOP per forward; peak RSS ours "
              f"{results['cases'][name]['peak_rss_mb']['ours']:.0f} MB, diffusers "
              f"{results['cases'][name]['peak_rss_mb']['diffusers']:.0f} MB")
        print(f"| pipeline | images/s | ratio vs diffusers | GFLOP/s | max abs diff vs diffusers fp32 |")
        print("|---|---|---|---|---|")
        for label, r in rows.items():
            print(f"| {label} | {r['images_per_second']:.2f} | {r['ratio']:.2f}x | {r['gflops']:.1f} | "
                  f"{r['max_diff_vs_diffusers_fp32']:.1e} |")
    results["forward_scaling"] = forward_scaling(args.quick)
    print("\nOne UNet forward (fp32, no_grad): | preset | resolution | batch | ms | ms per image |")
    for r in results["forward_scaling"]:
        print(f"| {r['preset']} | {r['resolution']} | {r['batch']} | {r['ms']:.1f} | {r['ms_per_image']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

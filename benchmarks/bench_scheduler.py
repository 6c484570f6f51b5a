"""Per-step overhead of the scheduler alone (no model): ddpm_hf.DDPMHFScheduler vs diffusers' DDPMScheduler.

For each shape and config, a full reverse loop

    for t in sched.timesteps:
        x = sched.step(model_output, t, x, generator=g).prev_sample

is timed with a fixed, precomputed ``model_output`` (so the model costs nothing), after ``set_timesteps``, with a
CPU ``torch.Generator``. ``sched.timesteps`` is iterated exactly as diffusers' DDPMPipeline does (0-d tensor
elements). Ours and diffusers' are interleaved in every repeat to reduce drift; the median microseconds per step
of each and the ratio ours / diffusers are reported. Short chains (50 steps) are looped so that every measurement
covers at least 1000 steps. Both schedulers are also checked to end on the same sample (same seed).

Usage:
    python benchmarks/bench_scheduler.py [--threads N] [--repeats R] [--quick] [--large] [--budget S]

On a shared machine, use --threads 1: with 2+ torch threads, elementwise ops on tensors larger than 32768 elements
run as OpenMP regions that stall whenever another process holds a core (timings then vary by 10-100x).
"""

import argparse
import gc
import math
import os
import platform
import statistics
import time

import diffusers
import torch
from diffusers import DDPMScheduler

from ddpm_hf import DDPMHFScheduler

MAIN_SHAPES = [(1, 1, 28, 28), (16, 3, 32, 32)]
LARGE_SHAPE = (64, 3, 32, 32)

# name -> (scheduler config overrides, num_inference_steps or None for the full chain, model-output channel factor)
CONFIGS = {
    "default (1000 steps)": ({}, None, 1),
    "50 steps, trailing": ({"timestep_spacing": "trailing"}, 50, 1),
    "learned_range (1000 steps)": ({"variance_type": "learned_range"}, None, 2),
}
DEFAULT_CONFIG = "default (1000 steps)"

# Goals on ours / diffusers for the default config.
GOALS = {(1, 1, 28, 28): 0.3, (16, 3, 32, 32): 0.9}

BASE_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    variance_type="fixed_small",
    clip_sample=True,
    prediction_type="epsilon",
)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def make_schedulers(overrides, num_inference_steps):
    config = dict(BASE_CONFIG, **overrides)
    scheds = {"diffusers": DDPMScheduler(**config), "ours": DDPMHFScheduler(**config)}
    for s in scheds.values():
        s.set_timesteps(num_inference_steps if num_inference_steps is not None else config["num_train_timesteps"])
    return scheds


def run_loop(sched, model_output, x_init, generator, loops):
    """Time ``loops`` full reverse loops; returns elapsed seconds and the final sample."""
    x = x_init
    start = time.perf_counter()
    for _ in range(loops):
        x = x_init
        for t in sched.timesteps:
            x = sched.step(model_output, t, x, generator=generator).prev_sample
    elapsed = time.perf_counter() - start
    return elapsed, x


def bench_case(shape, overrides, num_inference_steps, channel_factor, repeats, min_steps, budget):
    scheds = make_schedulers(overrides, num_inference_steps)
    n_steps = len(scheds["ours"].timesteps)
    assert n_steps == len(scheds["diffusers"].timesteps)
    assert torch.equal(scheds["ours"].timesteps, scheds["diffusers"].timesteps), "timesteps differ"
    loops = max(1, math.ceil(min_steps / n_steps))

    init = torch.Generator().manual_seed(0)
    b, c, h, w = shape
    model_output = torch.randn((b, c * channel_factor, h, w), generator=init)
    if channel_factor == 2:  # learned_range: v in [-1, 1]
        model_output[:, c:].uniform_(-1, 1, generator=init)
    x_init = torch.randn(shape, generator=init)

    # Sanity check + warm-up: same seed -> same final sample (both draw noise through randn_tensor).
    finals = {}
    for name, sched in scheds.items():
        _, finals[name] = run_loop(sched, model_output, x_init, torch.Generator().manual_seed(1), 1)
    max_diff = (finals["ours"] - finals["diffusers"]).abs().max().item()

    times = {name: [] for name in scheds}
    order = list(scheds)
    deadline = time.perf_counter() + budget
    for r in range(repeats):
        # Keep slow (or contended) cases inside the time budget, but never below 3 repeats.
        if r >= 3 and time.perf_counter() > deadline:
            break
        # Alternate who goes first to cancel any ordering effect.
        for name in order if r % 2 == 0 else order[::-1]:
            g = torch.Generator().manual_seed(1234 + r)
            gc.collect()
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                elapsed, _ = run_loop(scheds[name], model_output, x_init, g, loops)
            finally:
                if was_enabled:
                    gc.enable()
            times[name].append(elapsed / (loops * n_steps) * 1e6)
    return {
        "median": {name: statistics.median(v) for name, v in times.items()},
        "min": {name: min(v) for name, v in times.items()},
        "max": {name: max(v) for name, v in times.items()},
        "repeats": len(times["ours"]),
        "n_steps": n_steps,
        "max_diff": max_diff,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch default)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 7, quick 3)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and fewer steps per measurement")
    parser.add_argument("--large", action="store_true", help=f"also run shape {LARGE_SHAPE}")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per case; stop repeating (after 3) once exceeded (default 8, quick 3)",
    )
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    min_steps = 200 if args.quick else 1000  # each measurement covers at least this many steps
    budget = args.budget if args.budget is not None else (3.0 if args.quick else 8.0)
    shapes = MAIN_SHAPES + ([LARGE_SHAPE] if args.large else [])

    print("Scheduler step overhead: ddpm_hf.DDPMHFScheduler vs diffusers.DDPMScheduler (model excluded)")
    print(f"  torch      {torch.__version__}")
    print(f"  diffusers  {diffusers.__version__}")
    print(f"  python     {platform.python_version()}")
    print(f"  CPU        {cpu_model()} ({os.cpu_count()} logical cores visible)")
    print(f"  threads    {torch.get_num_threads()} (torch.get_num_threads)")
    print(f"  repeats    {repeats} (median reported; stops after 3 once a case passes {budget:g} s)")
    print(f"             >= {min_steps} steps per measurement, ours/diffusers interleaved")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()
        print(f"  load avg   {' '.join(f'{v:.2f}' for v in load)} (1/5/15 min, before the run)")
        if load[0] > 0.75 * (os.cpu_count() or 1):
            print(
                "  WARNING    the machine is busy: with more than one torch thread, other processes stall the\n"
                "             parallel elementwise ops (tensors > 32768 elements) and the timings can be off\n"
                "             by 10-100x; compare with --threads 1."
            )
    print()

    results = []
    t0 = time.perf_counter()
    for shape in shapes:
        for cname, (overrides, nis, factor) in CONFIGS.items():
            res = bench_case(shape, overrides, nis, factor, repeats, min_steps, budget)
            med, lo, hi = res["median"], res["min"], res["max"]
            res["ratio"] = med["ours"] / med["diffusers"]
            res["min_ratio"] = lo["ours"] / lo["diffusers"]
            results.append((shape, cname, res))
            print(
                f"  {str(shape):16s} {cname:28s} diffusers {med['diffusers']:8.1f} us/step  ours {med['ours']:8.1f}"
                f" us/step  ratio {res['ratio']:5.3f}  (x{res['repeats']}; min..max us/step: ours {lo['ours']:.0f}.."
                f"{hi['ours']:.0f}, diffusers {lo['diffusers']:.0f}..{hi['diffusers']:.0f};"
                f" max |diff| {res['max_diff']:.1e})",
                flush=True,
            )
    total = time.perf_counter() - t0
    print()

    header = (
        f"| {'shape':16s} | {'config':28s} | {'diffusers us/step':>17s} | {'ours us/step':>12s} | {'ratio':>5s} |"
        f" {'ratio of mins':>13s} | {'goal':>6s} | {'result':6s} |"
    )
    print("Medians over the repeats; 'ratio' = ours / diffusers of the medians;")
    print("'ratio of mins' = the same for the fastest repeat of each (less sensitive to other load).")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    misses = 0
    for shape, cname, res in results:
        med = res["median"]
        goal = GOALS.get(shape) if cname == DEFAULT_CONFIG else None
        if goal is None:
            goal_s, verdict = "", ""
        else:
            goal_s = f"<= {goal}"
            verdict = "PASS" if res["ratio"] <= goal else "MISS"
            misses += verdict == "MISS"
        print(
            f"| {str(shape):16s} | {cname:28s} | {med['diffusers']:17.1f} | {med['ours']:12.1f} | {res['ratio']:5.3f} |"
            f" {res['min_ratio']:13.3f} | {goal_s:>6s} | {verdict:6s} |"
        )
    print()
    for shape, goal in GOALS.items():
        ratio = next(res["ratio"] for s, c, res in results if s == shape and c == DEFAULT_CONFIG)
        verdict = "PASS" if ratio <= goal else "MISS"
        print(f"goal {str(shape):16s} default config: ratio {ratio:.3f} <= {goal}: {verdict}")
    if hasattr(os, "getloadavg"):
        print(f"load avg after the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"total benchmark time {total:.1f} s; {misses} goal(s) missed")


if __name__ == "__main__":
    main()

"""Our scheduler's step against diffusers' DDPMScheduler.step inside the same ``DDPMHFPipeline`` (issue 30): the
`make demo` model's UNet (``cpu-8-small``, learned variances, cosine schedule; fresh weights, the cost is the same),
the same batch, steps and generator, the two pipelines interleaved in one process. Prints the median pipeline time
of each and their ratio, then, from one profiled run of each, the seconds spent inside ``step`` (cProfile's
cumulative time of the scheduler's ``step``), the number that isolates the schedulers from the UNet.

    OMP_NUM_THREADS=1 python benchmarks/bench_step_in_pipeline.py --batch_size 500 --steps 100 --repeats 3
    OMP_NUM_THREADS=1 python benchmarks/bench_step_in_pipeline.py --model outputs/demo --batch_size 1000 --steps 100

With ``--model`` the UNet and scheduler config are a saved pipeline's (the trained `make demo` model: its weights,
its schedule), diffusers' DDPMScheduler made from the same config.
"""

import argparse
import cProfile
import pstats
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="cpu-8-small")
    p.add_argument("--model", help="a saved pipeline folder (its UNet and scheduler config) instead of --preset")
    args = p.parse_args()

    from diffusers import DDPMScheduler

    from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler, build_unet

    torch.manual_seed(0)
    if args.model:
        saved = DDPMHFPipeline.from_pretrained(args.model)
        unet, ours = saved.unet.eval(), saved.scheduler
    else:
        unet = build_unet(args.preset, channels=1, learned_variance=True).eval()
        ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    pipes = {"ours": DDPMHFPipeline(unet=unet, scheduler=ours),
             "diffusers": DDPMHFPipeline(unet=unet, scheduler=DDPMScheduler.from_config(ours.config))}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    def run(pipe):
        start = time.perf_counter()
        pipe(batch_size=args.batch_size, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
             output_type="np")
        return time.perf_counter() - start

    times = {name: [] for name in pipes}
    for _ in range(args.repeats):
        for name, pipe in pipes.items():
            times[name].append(run(pipe))
    median = {name: statistics.median(values) for name, values in times.items()}
    step = {}
    for name, pipe in pipes.items():
        profile = cProfile.Profile()
        profile.enable()
        run(pipe)
        profile.disable()
        step[name] = sum(entry[3] for (path, _, function), entry in pstats.Stats(profile).stats.items()
                         if function == "step" and "schedul" in path)
    print(f"{args.model or args.preset}, batch {args.batch_size}, {args.steps} steps, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} interleaved repeats")
    print("| scheduler in DDPMHFPipeline | pipeline s (median) | / diffusers | inside step, s (one profiled run) "
          "| / diffusers |\n|---|---|---|---|---|")
    for name in pipes:
        print(f"| {name} | {median[name]:.2f} | {median[name] / median['diffusers']:.3f} | {step[name]:.3f} | "
              f"{step[name] / step['diffusers']:.2f} |")


if __name__ == "__main__":
    main()

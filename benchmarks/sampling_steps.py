"""Sample grids of trained pipelines at several numbers of sampling steps (Nichol & Dhariwal sec. 4: learned
variances keep quality with fewer steps), one labelled grid per pipeline and step count, plus a JSON of timings.

    python benchmarks/sampling_steps.py outputs/demo/pipeline outputs/learned/pipeline --steps 1000 250 100 50 \\
        --output_dir outputs/sampling_steps
"""

import argparse
import json
import os
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipelines", nargs="+", help="saved pipeline folders")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 250, 100, 50])
    p.add_argument("--num_images", type=int, default=36)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/sampling_steps")
    args = p.parse_args()

    from ddpm_hf import DDPMHFPipeline
    from ddpm_hf.images import make_grid

    os.makedirs(args.output_dir, exist_ok=True)
    report = []
    for folder in args.pipelines:
        pipe = DDPMHFPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        variance = pipe.scheduler.config.variance_type
        name = os.path.basename(os.path.normpath(folder))  # a run's --output_dir (or an old run's pipeline/)
        if name == "pipeline":
            name = os.path.basename(os.path.dirname(os.path.normpath(folder))) or name
        for steps in args.steps:
            start = time.time()
            generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
            images = pipe(batch_size=args.num_images, generator=generators, num_inference_steps=steps,
                          output_type="np").images
            seconds = time.time() - start
            path = os.path.join(args.output_dir, f"{name}-{steps}.png")
            make_grid(images, title=f"{name} ({variance}): {steps} sampling steps").save(path)
            report.append({"pipeline": name, "variance_type": variance, "steps": steps, "seconds": round(seconds, 1),
                           "grid": path})
            print(report[-1], flush=True)
    with open(os.path.join(args.output_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

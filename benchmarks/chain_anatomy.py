"""The anatomy of a respaced ancestral chain (issue 17, "the erratic chain"): for each step count, the timesteps it
visits, how far its start is from pure noise (alphabar at the first timestep), the respaced beta'_t and posterior
variance betatilde'_t between which a learned_range model interpolates (Nichol & Dhariwal eq. 15 and sec. 4), and,
running the model on a few chains, the variance it actually uses (the interpolation fraction (v + 1) / 2 and sigma_t
against sqrt(betatilde'_t)) at the start, middle and end of the chain, with the pixel statistics of the results.

    python benchmarks/chain_anatomy.py outputs/demo --steps 1000 250 100 50 25 10 --num_images 32
"""

import argparse
import json
import os

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 250, 100, 50, 25, 10])
    p.add_argument("--num_images", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from ddpm_hf import DDPMHFPipeline
    from ddpm_hf.scheduling_ddpm_hf import split_model_output

    torch.set_num_threads(1)
    pipe = DDPMHFPipeline.from_pretrained(args.pipeline)
    unet, scheduler = pipe.unet.eval(), pipe.scheduler
    rows = []
    print("| steps | first t, stride, last t | alphabar(first t) | frac (v+1)/2 first / middle / last noisy step | "
          "sigma / sqrt(betatilde') at the same | pixels: mean, share at 0, share at 255, share in 1..254 |")
    print("|---|---|---|---|---|---|")
    for k in args.steps:
        scheduler.set_timesteps(k)
        ts = scheduler.timesteps.tolist()
        generator = torch.Generator().manual_seed(args.seed)
        x = torch.randn((args.num_images, 1, 8, 8), generator=generator)
        fracs, ratios = [], []
        with torch.no_grad():
            for t in ts:
                out = unet(x, t).sample
                eps, v = split_model_output(out, 1)
                post = scheduler.posterior(t)
                log_small = torch.log(post.variance.clamp(min=1e-20))
                log_large = torch.log(post.beta)
                frac = (v + 1) / 2
                sigma = torch.exp(0.5 * (frac * log_large + (1 - frac) * log_small))
                fracs.append(frac.mean().item())
                ratios.append((sigma / post.variance.clamp(min=1e-20).sqrt()).mean().item())
                x = scheduler.step(out, t, x, generator=generator).prev_sample
        images = ((x.clamp(-1, 1) + 1) * 127.5).round()
        pick = [0, len(ts) // 2, max(len(ts) - 2, 0)]  # the last step adds no noise (Ho Algorithm 2)
        row = {"steps": k, "timesteps_head": ts[:3], "timesteps_tail": ts[-3:], "stride": ts[0] - ts[1] if k > 1 else 0,
               "alphabar_first": float(scheduler.alphas_cumprod[ts[0]]), "frac": [fracs[i] for i in pick],
               "sigma_over_sqrt_betatilde": [ratios[i] for i in pick],
               "pixel_mean": images.mean().item() / 255, "share_0": (images == 0).float().mean().item(),
               "share_255": (images == 255).float().mean().item(),
               "share_mid": ((images > 0) & (images < 255)).float().mean().item()}
        rows.append(row)
        print(f"| {k} | {ts[0]}, {row['stride']}, {ts[-1]} | {row['alphabar_first']:.2e} | "
              f"{' / '.join(f'{f:.3f}' for f in row['frac'])} | "
              f"{' / '.join(f'{r:.2f}' for r in row['sigma_over_sqrt_betatilde'])} | "
              f"{row['pixel_mean']:.3f}, {row['share_0']:.3f}, {row['share_255']:.3f}, {row['share_mid']:.3f} |",
              flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

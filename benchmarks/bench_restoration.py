"""Restoration with a trained model on held-out digits: the `make demo` model (8x8 digits, 180 held out) or an `mnist`
model (28x28, ``--dataset mnist``, 500 held out): inpainting of half and quarter masks (our RePaint, our DDNM-style
projection, plain replacement, diffusers' RePaintPipeline), super-resolution (x2 on the digits, 4x4 -> 8x8; x4 on
MNIST, 7x7 -> 28x28: DDNM, ILVR, bicubic) and denoising (ours, the noisy input, a Gaussian blur), with PSNR and the
accuracy of the dataset's shipped classifier on the results. Prints a markdown table (BENCHMARKS.md) and can draw a
picture of each task.

    OMP_NUM_THREADS=1 python benchmarks/bench_restoration.py --model outputs/demo --picture docs/restoration.png
    OMP_NUM_THREADS=1 python benchmarks/bench_restoration.py --model outputs/mnist --dataset mnist --limit 100 \
        --steps 50 --picture docs/restoration-mnist.png

The classifier is the offline metric's (ddpm_hf.evaluation.digits or .mnist), applied to the results saved as 8-bit
images. Every method gets the same seed.
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_hf import DDPMHFPipeline
from ddpm_hf.data import load_digits_dataset
from ddpm_hf.pipeline_ddpm_hf_img2img import DDPMHFImg2ImgPipeline
from ddpm_hf.pipeline_ddpm_hf_inpaint import DDPMHFInpaintPipeline
from ddpm_hf.pipeline_ddpm_hf_super_resolution import DDPMHFSuperResolutionPipeline

MASKS = ("left half", "bottom half", "centre quarter")
SR_SCALE = {"digits": 2, "mnist": 4}  # 4x4 -> 8x8; 7x7 -> 28x28


def held_out(dataset, split):
    """(images (N, 1, H, W) float in [0, 1], labels (N,) array) of the embedded digits or MNIST."""
    if dataset == "mnist":
        from ddpm_hf.evaluation.mnist import mnist_arrays

        images, labels = mnist_arrays("test" if split == "test" else "train")
        return images.float() / 255, labels
    data = load_digits_dataset()[split]
    images = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in data["image"]])
    return torch.from_numpy(images)[:, None], np.asarray(data["label"])


def classifier(dataset):
    """A function images (B, 1, H, W) in [0, 1] -> predicted labels, and its name: the offline metric's classifier,
    on the images as they are saved (8-bit)."""
    if dataset == "mnist":
        from ddpm_hf.evaluation.mnist import load_mnist_classifier as load
    else:
        from ddpm_hf.evaluation.digits import load_digits_classifier as load
    model = load()

    def classify(images):
        return model.probabilities((images.clamp(0, 1) * 255).round().to(torch.uint8)).argmax(1)

    return classify, f"the {dataset} metric's classifier (ddpm_hf.evaluation.{dataset})"


def mask_of(name, size=8):
    """1 = repaint (diffusers' inpainting convention). "centre quarter": the centre square of half the side, a
    quarter of the pixels (4x4 of 8x8, 14x14 of 28x28)."""
    mask = torch.zeros(1, 1, size, size)
    if name == "left half":
        mask[..., :, : size // 2] = 1
    elif name == "bottom half":
        mask[..., size // 2 :, :] = 1
    else:
        mask[..., size // 4 : size - size // 4, size // 4 : size - size // 4] = 1
    return mask


def psnr(result, truth, where=None):
    """PSNR (dB, peak 1) of the mean squared error over all pixels (or the pixels where ``where`` is 1) of all
    images."""
    error = (result - truth) ** 2
    if where is not None:
        where = where.expand_as(error)
        error = error[where > 0.5]
    return float(10 * torch.log10(1 / error.mean()))


class EpsilonOnly(torch.nn.Module):
    """The UNet as diffusers' RePaintPipeline wants it: only the epsilon channels of the output."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.config = unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return self.unet.device

    def forward(self, x, t):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=self.unet(x, t).sample[:, : x.shape[1]])


def diffusers_repaint(base, truth, mask, steps, jump_length, jump_n_sample, seed):
    from diffusers import RePaintPipeline, RePaintScheduler

    config = base.scheduler.config
    scheduler = RePaintScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                                 beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=True)
    pipe = RePaintPipeline(unet=EpsilonOnly(base.unet), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    calls = {"n": 0}

    def count(module, args):
        calls["n"] += 1

    hook = pipe.unet.register_forward_pre_hook(count)
    # diffusers' RePaint: mask 1 = keep; tensors are passed through unchanged, images in [-1, 1]
    out = pipe(image=truth * 2 - 1, mask_image=(1 - mask).expand_as(truth), num_inference_steps=steps,
               jump_length=jump_length, jump_n_sample=jump_n_sample, generator=torch.Generator().manual_seed(seed),
               output_type="np")
    hook.remove()
    return torch.from_numpy(out.images).permute(0, 3, 1, 2), calls["n"]


def gaussian_blur(images, std):
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(
        np.stack([gaussian_filter(im, sigma=(0, std, std), mode="nearest") for im in images.numpy()])
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/demo", help="a saved DDPMHFPipeline folder (default outputs/demo)")
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                        help="the model's data: its held-out digits, classifier and super-resolution factor")
    parser.add_argument("--steps", type=int, default=100, help="respaced reverse steps of every chain (default 100)")
    parser.add_argument("--jump_length", type=int, default=10, help="RePaint's j (default 10)")
    parser.add_argument("--jump_n_sample", type=int, default=10, help="RePaint's r (default 10)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use N held-out digits, the first N / 10 of each class (default all: 180 digits, "
                        "500 MNIST)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--picture", default=None, help="draw each task on 8 digits into this PNG")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    base = DDPMHFPipeline.from_pretrained(args.model)
    inpaint, upscale = DDPMHFInpaintPipeline.from_pipe(base), DDPMHFSuperResolutionPipeline.from_pipe(base)
    img2img = DDPMHFImg2ImgPipeline.from_pipe(base)
    for pipe in (inpaint, upscale, img2img):
        pipe.set_progress_bar_config(disable=True)
    truth, labels = held_out(args.dataset, "test")
    if args.limit:  # the first limit / 10 of each class (MNIST's held-out split is sorted by class)
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[: args.limit // 10] for c in range(10)]))
        truth, labels = truth[keep], labels[keep]
    classify, classifier_name = classifier(args.dataset)
    size, factor = truth.shape[-1], SR_SCALE[args.dataset]

    def accuracy(images):
        return float((classify(images) == labels).mean())

    def gen():
        return torch.Generator().manual_seed(args.seed)

    rows = {"classifier": classifier_name, "images": len(truth), "steps": args.steps,
            "clean accuracy": accuracy(truth), "inpainting": [], "super-resolution": [], "denoising": [],
            "dataset": args.dataset, "sr": f"x{factor} ({size // factor}x{size // factor} -> {size}x{size})"}
    started = time.time()
    j, r, steps = args.jump_length, args.jump_n_sample, args.steps
    for name in MASKS:
        mask = mask_of(name, size)
        runs = {
            f"ours RePaint (j={j}, r={r})": lambda: inpaint(truth, mask, method="repaint", num_inference_steps=steps,
                                                             jump_length=j, jump_n_sample=r, generator=gen(),
                                                             output_type="pt"),
            "ours DDNM": lambda: inpaint(truth, mask, method="ddnm", num_inference_steps=steps, generator=gen(),
                                         output_type="pt"),
            "replacement (RePaint, r=1)": lambda: inpaint(truth, mask, method="repaint", num_inference_steps=steps,
                                                          jump_n_sample=1, generator=gen(), output_type="pt"),
        }
        for method, run in runs.items():
            t0 = time.time()
            out = run()
            rows["inpainting"].append(dict(mask=name, method=method, psnr=psnr(out.images, truth, mask),
                                           accuracy=accuracy(out.images), unet_calls=out.unet_calls,
                                           seconds=time.time() - t0))
            print(rows["inpainting"][-1], flush=True)
        t0 = time.time()
        images, calls = diffusers_repaint(base, truth, mask, steps, j, r, args.seed)
        rows["inpainting"].append(dict(mask=name, method=f"diffusers RePaintPipeline (eta=0, j={j}, r={r})",
                                       psnr=psnr(images, truth, mask), accuracy=accuracy(images), unet_calls=calls,
                                       seconds=time.time() - t0))
        print(rows["inpainting"][-1], flush=True)

    low = F.avg_pool2d(truth, factor)
    for method in ("ddnm", "ilvr"):
        t0 = time.time()
        result = upscale(low, scale=factor, method=method, num_inference_steps=steps, generator=gen(),
                         output_type="pt")
        images = result.images
        rows["super-resolution"].append(dict(method=f"ours {method.upper()}", psnr=psnr(images, truth),
                                             accuracy=accuracy(images),
                                             consistency=float((F.avg_pool2d(images, factor) - low).abs().max()),
                                             unet_calls=result.unet_calls, seconds=time.time() - t0))
        print(rows["super-resolution"][-1], flush=True)
    for method, images in (("bicubic", F.interpolate(low, scale_factor=factor, mode="bicubic").clamp(0, 1)),
                           ("replicate (A+ y)", low.repeat_interleave(factor, -2).repeat_interleave(factor, -1))):
        rows["super-resolution"].append(dict(method=method, psnr=psnr(images, truth), accuracy=accuracy(images),
                                             consistency=float((F.avg_pool2d(images, factor) - low).abs().max()),
                                             unet_calls=0, seconds=0.0))

    train_truth = held_out(args.dataset, "train")[0]
    noise_gen = torch.Generator().manual_seed(args.seed + 1)
    for sigma in (0.1, 0.2, 0.4):
        noisy = truth + sigma * torch.randn(truth.shape, generator=noise_gen)
        t0 = time.time()
        out = img2img(noisy, noise_level=sigma, num_inference_steps=steps, generator=gen(), output_type="pt")
        seconds = time.time() - t0
        # the blur's width is tuned on noisy training digits (not on the test set)
        train_noisy = train_truth + sigma * torch.randn(train_truth.shape, generator=torch.Generator().manual_seed(7))
        widths = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5]
        best = max(widths, key=lambda w: psnr(gaussian_blur(train_noisy, w).clamp(0, 1), train_truth))
        blurred = gaussian_blur(noisy, best).clamp(0, 1)
        for method, images, calls, secs in (
            (f"ours (t* = {out.start_timestep})", out.images, out.unet_calls, seconds),
            ("noisy input (clipped to [0, 1])", noisy.clamp(0, 1), 0, 0.0),
            (f"Gaussian blur (std {best} px, tuned on train)", blurred, 0, 0.0),
        ):
            rows["denoising"].append(dict(sigma=sigma, method=method, psnr=psnr(images, truth),
                                          accuracy=accuracy(images), unet_calls=calls, seconds=secs))
            print(rows["denoising"][-1], flush=True)
    rows["seconds"] = time.time() - started
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.picture:
        draw(args, inpaint, upscale, img2img, *held_out(args.dataset, "test"), factor)


def markdown(rows):
    lines = [f"Classifier: {rows['classifier']} (accuracy on the clean held-out digits: {rows['clean accuracy']:.3f}); "
             f"{rows['images']} digits; {rows['steps']} respaced steps per chain.", "",
             "| mask | method | PSNR masked (dB) | accuracy | UNet calls / image |", "|---|---|---|---|---|"]
    lines += [f"| {r['mask']} | {r['method']} | {r['psnr']:.2f} | {r['accuracy']:.3f} | {r['unet_calls']} |"
              for r in rows["inpainting"]]
    lines += ["", f"| {rows.get('sr', 'x2 (4x4 -> 8x8)')} | PSNR (dB) | accuracy | max abs(A x - y) "
              "| UNet calls / image |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['psnr']:.2f} | {r['accuracy']:.3f} | {r['consistency']:.1e} | {r['unet_calls']} |"
              for r in rows["super-resolution"]]
    lines += ["", "| sigma | method | PSNR (dB) | accuracy | UNet calls / image |", "|---|---|---|---|---|"]
    lines += [f"| {r['sigma']} | {r['method']} | {r['psnr']:.2f} | {r['accuracy']:.3f} | {r['unet_calls']} |"
              for r in rows["denoising"]]
    return "\n".join(lines)


def draw(args, inpaint, upscale, img2img, truth, labels, factor=2):
    """The picture (docs/restoration.png): for one digit of each class 0..7, each task's degraded input, result and
    the truth, upscaled to be seen."""
    from PIL import Image

    from ddpm_hf.images import make_grid

    picks = [int(np.flatnonzero(labels == k)[0]) for k in range(8)]
    x = truth[picks]
    gen = torch.Generator().manual_seed(args.seed)
    steps, grey = args.steps, torch.full_like(x, 0.5)
    mask = mask_of("left half", x.shape[-1])
    repaint = inpaint(x, mask, method="repaint", num_inference_steps=steps, jump_length=args.jump_length,
                      jump_n_sample=args.jump_n_sample, generator=gen, output_type="pt").images
    low = F.avg_pool2d(x, factor)
    sr = upscale(low, scale=factor, method="ddnm", num_inference_steps=steps, generator=gen, output_type="pt").images
    noisy = x + 0.2 * torch.randn(x.shape, generator=gen)
    denoised = img2img(noisy, noise_level=0.2, num_inference_steps=steps, generator=gen, output_type="pt").images
    sdedit = img2img(x, strength=0.5, num_inference_steps=steps, generator=gen, output_type="pt").images
    panels = [
        ("inpainting, left half (RePaint): rows = masked input (grey = repaint), result, truth",
         [torch.where(mask > 0.5, grey, x), repaint, x]),
        (f"super-resolution x{factor} (DDNM): rows = {low.shape[-1]}x{low.shape[-1]} input, result, truth",
         [low.repeat_interleave(factor, -2).repeat_interleave(factor, -1), sr, x]),
        ("denoising, sigma 0.2: rows = noisy input, result, truth", [noisy.clamp(0, 1), denoised, x]),
        ("img2img (SDEdit), strength 0.5: rows = input, result", [x, sdedit]),
    ]
    grids = [make_grid(torch.cat(images).permute(0, 2, 3, 1).numpy(), nrow=8, tile=max(48, 3 * x.shape[-1]),
                           title=title)
             for title, images in panels]
    canvas = Image.new("RGB", (max(g.width for g in grids), sum(g.height for g in grids)), "white")
    top = 0
    for g in grids:
        canvas.paste(g, (0, top))
        top += g.height
    canvas.save(args.picture)
    print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()

"""Inpainting, super-resolution, img2img and denoising pipelines (issue 11), their CLI commands and their no-install
route. Tiny UNets with random weights and few steps: what is checked holds for any network (the known region kept
exactly, data consistency, the strength/t0 and sigma/t* mappings, agreement with diffusers' RePaintPipeline in
distribution, the forward marginal by Monte Carlo)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, RePaintPipeline, RePaintScheduler
from PIL import Image
from hub_server import HubServer
from helpers import forked_cli, hub_env, local_env, run_python
from helpers import tiny_unet as helpers_tiny_unet

from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler
from ddpm_hf.cli import main as cli_main
from ddpm_hf.pipeline_ddpm_hf import TASK_PIPELINES
from ddpm_hf.pipeline_ddpm_hf_img2img import DDPMHFImg2ImgPipeline
from ddpm_hf.pipeline_ddpm_hf_inpaint import DDPMHFInpaintPipeline, repaint_path
from ddpm_hf.pipeline_ddpm_hf_super_resolution import (
    DDPMHFSuperResolutionPipeline,
    consistent_clip,
    downsample,
    upsample,
)

# In-process sampling on one thread, as the subprocesses (helpers.THREADS).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_unet(channels=1, learned=False, seed=0):
    return helpers_tiny_unet(channels, learned, seed=seed, norm_num_groups=8)


def make(cls, channels=1, learned=False, **scheduler_kwargs):
    scheduler_kwargs.setdefault("variance_type", "learned_range" if learned else "fixed_small")
    pipe = cls(unet=tiny_unet(channels, learned), scheduler=DDPMHFScheduler(**scheduler_kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def digits(n=3, channels=1, seed=0):
    """Images whose values are k/255, in [0, 1], (n, C, 8, 8)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, 8, 8), generator=g).float() / 255


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def first_call(pipe):
    """Record (x, t) of every UNet call: returns the list, filled as the pipeline runs."""
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append((args[0].clone(), int(args[1]))))
    return calls


# ------------------------------------------------------------------------------------------------ inpainting


def get_schedule_jump(t_T, jump_length, jump_n_sample):
    """RePaint's resampling schedule, ported from the RePaint code (andreas128/RePaint, guided_diffusion/scheduler.py,
    ``get_schedule_jump`` with its defaults n_sample = jump2/jump3 = 1, which add nothing): the levels t visited,
    t_T - 1 (the start, x_T) down to -1 (the clean image); t -> t - 1 is a reverse step, t -> t + 1 a jump."""
    jumps = {}
    for j in range(0, t_T - jump_length, jump_length):
        jumps[j] = jump_n_sample - 1
    t = t_T
    ts = []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    ts.append(-1)
    return ts


def test_repaint_path_is_the_schedule_of_the_repaint_code():
    for steps, j, r in ((250, 10, 10), (20, 10, 2), (50, 5, 3), (30, 10, 1), (12, 4, 10), (5, 10, 3), (10, 1, 3)):
        path = repaint_path(steps, j, r)
        assert path == [steps - 1 - t for t in get_schedule_jump(steps, j, r)], (steps, j, r)
        assert all(abs(b - a) == 1 for a, b in zip(path, path[1:])) and path[-1] == steps
        assert path.index(steps) == len(path) - 1  # no jump starts from the clean image (Alg. 1: only for t > 1)
    # diffusers' RePaintScheduler jumps one state later: each of its jumps starts where ours has taken one more step
    scheduler = RePaintScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(250, jump_length=10, jump_n_sample=10)
    theirs = [0] + [250 - v for v in (scheduler.timesteps // 4).tolist()]
    ours = repaint_path(250, 10, 10)

    def jump_starts(path):
        return sorted({a for before, a, b in zip(path, path[1:], path[2:]) if before < a > b})

    assert jump_starts(ours) == list(range(19, 250, 10)) and jump_starts(theirs) == list(range(20, 251, 10))
    pipe = make(DDPMHFInpaintPipeline)
    out = pipe(digits(1), torch.ones(8, 8), num_inference_steps=12, jump_length=4, jump_n_sample=3,
               output_type="np", generator=gen())
    path = repaint_path(12, 4, 3)
    assert out.unet_calls == sum(b == a + 1 for a, b in zip(path, path[1:])) == 12 + 2 * 4 * 2


def linear_alphabar():
    """alphabar_t of Ho's linear schedule (1e-4 -> 0.02, T = 1000) in float32, written here from Ho sec. 4."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32), 0)


def reference_reverse_step(unet, x, t, s, alphabar, g, x0_transform=lambda x0: x0):
    """One ancestral step t -> s (s = -1: the clean image) from the papers, for an epsilon UNet with fixed_small
    variance and clip_sample: x0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t) clipped to [-1, 1] (Ho eq.
    15), transformed, then x_s = mutilde(x_t, x0) + sqrt(betatilde) z (Ho eq. 7 over a skipped step, N&D sec. 4), no
    noise at the last step (Ho Alg. 2). Returns (x_s, x0, a) with a the x0 coefficient of the mean."""
    ab_t, ab_s = float(alphabar[t]), 1.0 if s < 0 else float(alphabar[s])
    eps = unet(x, t).sample
    x0 = x0_transform(((x - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5).clamp(-1, 1))
    beta = 1 - ab_t / ab_s
    a, b = ab_s**0.5 * beta / (1 - ab_t), (ab_t / ab_s) ** 0.5 * (1 - ab_s) / (1 - ab_t)
    x_s = a * x0 + b * x
    if s >= 0:
        x_s = x_s + ((1 - ab_s) / (1 - ab_t) * beta) ** 0.5 * torch.randn(x.shape, generator=g)
    return x_s, x0, a


@pytest.mark.parametrize("method", ["repaint", "ddnm"])
def test_inpainting_chain_is_repaint_and_ddnm_algorithm_1(method):
    """The whole result, masked region included, against RePaint Alg. 1 (Lugmayr et al. CVPR 2022) and DDNM Alg. 1
    (Wang et al. ICLR 2023) written here from the papers, with the same draws: checks the loop itself, which the
    final paste of the known pixels does not reveal."""
    pipe = make(DDPMHFInpaintPipeline)
    images, masks = digits(2, seed=7), torch.zeros(2, 1, 8, 8)
    masks[0, :, :, :5] = 1
    masks[1, :, 2:7, 1:6] = 1
    steps, j, r = 10, 3, 3
    out = pipe(images, masks, method=method, num_inference_steps=steps, jump_length=j, jump_n_sample=r,
               generator=gen(3), output_type="pt").images

    alphabar, g = linear_alphabar(), gen(3)
    chain = list(range(900, -1, -100))  # "leading" spacing of 10 steps (diffusers' set_timesteps)
    y, m = images * 2 - 1, masks.expand_as(images)
    levels = get_schedule_jump(steps, j, r)  # RePaint code's levels: chain state k = steps - 1 - level
    x = torch.randn(y.shape, generator=g)
    with torch.no_grad():
        for level, level_next in zip(levels[:-1], levels[1:]):
            k, k_next = steps - 1 - level, steps - 1 - level_next
            ab_next = 1.0 if k_next == steps else float(alphabar[chain[k_next]])
            if k_next == k + 1:
                s = chain[k_next] if k_next < steps else -1
                if method == "ddnm":  # x^_0|t = A+ y + (I - A+ A) x_0|t, A = diag(1 - m)
                    project = lambda x0: m * x0 + (1 - m) * y  # noqa: E731
                    x, _, _ = reference_reverse_step(pipe.unet, x, chain[k], s, alphabar, g, project)
                else:
                    unknown, _, _ = reference_reverse_step(pipe.unet, x, chain[k], s, alphabar, g)  # line 7
                    known = ab_next**0.5 * y + (1 - ab_next) ** 0.5 * torch.randn(y.shape, generator=g)  # line 5
                    x = m * unknown + (1 - m) * known  # line 8
            else:  # line 10: x_t ~ q(x_t | x_s)
                ratio = ab_next / float(alphabar[chain[k]])
                x = ratio**0.5 * x + (1 - ratio) ** 0.5 * torch.randn(y.shape, generator=g)
    reference = ((x + 1) / 2).clamp(0, 1)
    assert (reference - images)[m > 0.5].abs().max() > 0.05  # the masked region was redrawn
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["repaint", "ddnm"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_inpainting_keeps_the_known_region_exactly_for_a_batch_of_masks(method, prediction_type):
    pipe = make(DDPMHFInpaintPipeline, learned=True, prediction_type=prediction_type, timestep_spacing="trailing")
    images = digits(3)
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, :, :, :4] = 1
    masks[1, :, 4:, :] = 1
    masks[2, :, 2:6, 2:6] = 1
    out = pipe(images, masks, method=method, num_inference_steps=6, jump_length=2, jump_n_sample=2,
               generator=gen(), output_type="pt").images
    assert out.shape == images.shape
    keep = masks.expand_as(images) < 0.5
    torch.testing.assert_close(out[keep], images[keep], atol=1e-6, rtol=0)
    assert (out[~keep] - images[~keep]).abs().max() > 0.05  # the masked region was redrawn
    # each image used its own mask: every image was redrawn somewhere
    assert ((out - images).abs().flatten(1).max(1).values > 0.05).all()


def test_replacement_agrees_with_diffusers_repaint_in_distribution():
    """Without resampling, RePaint's replacement step with our DDPM step (fixed_small) and diffusers' RePaintPipeline
    with eta = 1 (DDIM with eta = 1 is the DDPM posterior step, Song et al. 2021 eq. 16) draw from the same
    distribution: compare per-pixel means and standard deviations over 1500 samples (clipping off in both)."""
    unet = tiny_unet(seed=3)
    image = digits(1, seed=5)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1  # repaint the left half
    n, steps = 1500, 10
    ours = DDPMHFInpaintPipeline(unet=unet, scheduler=DDPMHFScheduler(clip_sample=False))
    ours.set_progress_bar_config(disable=True)
    a = ours(image.expand(n, -1, -1, -1), mask, jump_n_sample=1, num_inference_steps=steps, generator=gen(1),
             output_type="pt").images
    theirs = RePaintPipeline(unet=unet, scheduler=RePaintScheduler(clip_sample=False))
    theirs.set_progress_bar_config(disable=True)
    b = theirs(image=image.expand(n, -1, -1, -1) * 2 - 1, mask_image=(1 - mask).expand(n, -1, -1, -1), eta=1.0,
               num_inference_steps=steps, jump_n_sample=1, generator=gen(2), output_type="np").images
    b = torch.from_numpy(b).permute(0, 3, 1, 2)
    region = mask.expand_as(a[:1])[0] > 0.5
    mean_a, mean_b = a.mean(0)[region], b.mean(0)[region]
    std_a, std_b = a.std(0)[region], b.std(0)[region]
    assert std_a.mean() > 0.05  # not a degenerate comparison
    z = (mean_a - mean_b) / ((std_a**2 + std_b**2) / n).sqrt().clamp(min=1e-3)
    assert z.abs().max() < 4.5, z
    assert ((std_a - std_b).abs() / std_b.clamp(min=1e-3)).max() < 0.2
    torch.testing.assert_close(a[:, ~region.expand_as(a[0])], b[:, ~region.expand_as(b[0])], atol=1e-6, rtol=0)


def test_inpainting_inputs_pil_numpy_tensor_grayscale_and_rgb():
    rgb = make(DDPMHFInpaintPipeline, channels=3)
    image = digits(1, channels=3)[0]
    pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255
    out = rgb(pil, Image.fromarray(mask), num_inference_steps=3, jump_n_sample=1, generator=gen()).images
    assert len(out) == 1 and out[0].mode == "RGB" and out[0].size == (8, 8)
    np.testing.assert_array_equal(np.asarray(out[0])[:, 4:], np.asarray(pil)[:, 4:])  # kept to the last bit
    from_numpy = rgb(image.permute(1, 2, 0).numpy(), mask / 255.0, num_inference_steps=3, jump_n_sample=1,
                     generator=gen(), output_type="np").images
    from_tensor = rgb(image, torch.from_numpy(mask / 255.0)[None], num_inference_steps=3, jump_n_sample=1,
                      generator=gen(), output_type="np").images
    assert from_numpy.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(from_numpy, from_tensor, atol=1e-6)
    np.testing.assert_allclose(from_numpy[0] * 255, np.asarray(out[0]), atol=0.51)  # same draw as the PIL call
    gray = make(DDPMHFInpaintPipeline)
    out = gray(Image.fromarray(mask), Image.fromarray(mask), num_inference_steps=2, method="ddnm").images
    assert out[0].mode == "L"


def test_a_mask_that_is_not_binary_is_thresholded_at_one_half():
    pipe = make(DDPMHFInpaintPipeline)
    image = digits(1)
    soft = torch.rand(1, 1, 8, 8, generator=gen(3))
    hard = (soft >= 0.5).float()
    kwargs = dict(num_inference_steps=4, jump_length=2, jump_n_sample=2, output_type="np")
    np.testing.assert_array_equal(pipe(image, soft, generator=gen(), **kwargs).images,
                                  pipe(image, hard, generator=gen(), **kwargs).images)


def test_bad_inputs_get_one_clear_error():
    inpaint = make(DDPMHFInpaintPipeline)
    image = digits(1)
    with pytest.raises(ValueError, match=r"mask_image is \(4, 4\).*image is \(8, 8\)"):
        inpaint(image, torch.ones(1, 1, 4, 4), num_inference_steps=2)
    with pytest.raises(ValueError, match="the image has 3 channels but the model takes 1"):
        inpaint(digits(1, channels=3), torch.ones(1, 1, 8, 8), num_inference_steps=2)
    with pytest.raises(ValueError, match="2 images and 3 masks"):
        inpaint(digits(2), torch.ones(3, 1, 8, 8), num_inference_steps=2)
    with pytest.raises(ValueError, match="method must be one of"):
        inpaint(image, torch.ones(1, 1, 8, 8), method="blend")
    img2img = make(DDPMHFImg2ImgPipeline)
    for strength in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            img2img(image, strength=strength, num_inference_steps=2)
    with pytest.raises(ValueError, match="runs no step"):
        img2img(image, strength=0.05, num_inference_steps=10)
    with pytest.raises(ValueError, match="noise_level must be > 0"):
        img2img(image, noise_level=0.0)
    with pytest.raises(ValueError, match="the image has 1 channels but the model takes 3"):
        make(DDPMHFImg2ImgPipeline, channels=3)(image, strength=0.5, num_inference_steps=2)
    upscale = make(DDPMHFSuperResolutionPipeline)
    with pytest.raises(ValueError, match=r"cannot take scale 3"):
        upscale(torch.rand(1, 1, 3, 3), scale=3)
    with pytest.raises(ValueError, match="not a whole multiple"):
        upscale(torch.rand(1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"give a \(4, 4\) input"):
        upscale(torch.rand(1, 1, 2, 2), scale=2)
    with pytest.raises(ValueError, match="scale must be an integer >= 2"):
        upscale(torch.rand(1, 1, 8, 8), scale=1)
    with pytest.raises(ValueError, match="only with method='ddnm'"):
        upscale(torch.rand(1, 1, 4, 4), method="ilvr", noise_level=0.1)


# ------------------------------------------------------------------------------------------------ super-resolution


@pytest.mark.parametrize("method", ["ddnm", "ilvr"])
@pytest.mark.parametrize("scale", [2, 4])
def test_super_resolution_is_consistent_with_its_input(method, scale):
    pipe = make(DDPMHFSuperResolutionPipeline, channels=3, learned=True, prediction_type="v_prediction")
    truth = digits(2, channels=3)
    low = F.avg_pool2d(truth, scale)
    out = pipe(low, method=method, num_inference_steps=5, generator=gen(), output_type="pt").images
    assert out.shape == truth.shape and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(F.avg_pool2d(out, scale), low, atol=2e-6, rtol=0)  # A x = y
    assert (out - low.repeat_interleave(scale, -2).repeat_interleave(scale, -1)).abs().max() > 0.02  # not just A+ y
    # the PNG a user saves: its downsampling equals the input up to quantisation
    pngs = pipe.numpy_to_pil(out.permute(0, 2, 3, 1).numpy())
    png = np.stack([np.asarray(im, dtype=np.float64) / 255 for im in pngs])
    down = F.avg_pool2d(torch.from_numpy(png).permute(0, 3, 1, 2), scale)
    assert (down - low.double()).abs().max() <= 0.5 / 255 + 1e-9


def test_consistent_clip_is_the_projection_onto_the_box_and_the_constraint():
    x = 1.5 * torch.randn(4, 1, 8, 8, generator=gen(0))
    y = torch.rand(4, 1, 4, 4, generator=gen(1)) * 1.8 - 0.9
    z = consistent_clip(x, y, 2)
    assert z.min() >= -1 and z.max() <= 1
    torch.testing.assert_close(F.avg_pool2d(z, 2), y, atol=1e-6, rtol=0)
    # no other feasible point is nearer: random feasible perturbations of z (mean-zero per block, inside the box)
    for seed in range(20):
        d = torch.randn(4, 1, 8, 8, generator=gen(seed + 2)) * 0.05
        d = d - F.avg_pool2d(d, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
        w = z + d
        feasible = ((w.abs() <= 1).flatten(1).all(1))
        closer = (w - x).square().flatten(1).sum(1) < (z - x).square().flatten(1).sum(1) - 1e-6
        assert not (feasible & closer).any()


def test_ddnm_plus_runs_with_a_noisy_input_and_reduces_to_ddnm_without_noise():
    """With sigma_y -> 0, lambda_t = 1 and Phi_t = sigma_t^2 at every step where sigma_t > 0, so DDNM+ is DDNM up to
    the last step; there sigma_t = 0 gives lambda_t = 0 (DDNM+ does not force a noisy y): projecting DDNM+'s result
    then gives DDNM's."""
    pipe = make(DDPMHFSuperResolutionPipeline, learned=True)
    low = F.avg_pool2d(digits(2), 2)
    noisy = low + 0.05 * torch.randn(low.shape, generator=gen(4))
    out = pipe(noisy, noise_level=0.05, num_inference_steps=5, generator=gen(), output_type="pt").images
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    tiny = pipe(low, noise_level=1e-7, num_inference_steps=5, generator=gen(), output_type="pt").images * 2 - 1
    exact = pipe(low, num_inference_steps=5, generator=gen(), output_type="pt").images * 2 - 1
    y = low * 2 - 1
    projected = tiny - upsample(downsample(tiny, 2) - y, 2)  # DDNM's x^_0 = x_0 - A+(A x_0 - y)
    torch.testing.assert_close(consistent_clip(projected, y, 2), exact, atol=1e-4, rtol=0)


def record_steps(pipe):
    """Record the pred_original_sample of every scheduler step (the x0 the step's posterior mean used)."""
    seen, step = [], pipe.scheduler.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append(out.pred_original_sample.clone())
        return out

    pipe.scheduler.step = recording_step
    return seen


def test_ddnm_super_resolution_is_consistent_inside_the_chain():
    """A x^_0|t = y at every step (DDNM Alg. 1), not only after the final consistent clip: a bright input makes the
    projection leave [-1, 1], and clipping it again (the deviation of issue 16) would break A x0 = y."""
    pipe = make(DDPMHFSuperResolutionPipeline)
    low = 0.9 + 0.1 * torch.rand(2, 1, 4, 4, generator=gen(5))  # [0, 1] pixels near white
    seen = record_steps(pipe)
    pipe(low, num_inference_steps=6, generator=gen(), output_type="pt")
    y = low * 2 - 1
    assert len(seen) == 6 and max(float(x0.abs().max()) for x0 in seen) > 1  # the projection left [-1, 1]
    for x0 in seen:
        torch.testing.assert_close(F.avg_pool2d(x0, 2), y, atol=1e-5, rtol=0)


def test_ilvr_chain_is_choi_algorithm_1():
    """ILVR (Choi et al. ICCV 2021, Alg. 1) written here, with the same draws: x'_s ~ p(x_s | x_t), y_s ~ q(y_s | y)
    (Ho eq. 4), x_s = phi(y_s) + x'_s - phi(x'_s), phi = A+ A; then the pipeline's consistent clip."""
    pipe = make(DDPMHFSuperResolutionPipeline)
    low = F.avg_pool2d(digits(2, seed=4), 2)
    out = pipe(low, method="ilvr", num_inference_steps=8, generator=gen(2), output_type="pt").images

    alphabar, g = linear_alphabar(), gen(2)
    chain = list(range(875, -1, -125))
    y = low * 2 - 1
    y_up, phi = upsample(y, 2), lambda z: upsample(downsample(z, 2), 2)
    x = torch.randn((2, 1, 8, 8), generator=g)
    with torch.no_grad():
        for k, t in enumerate(chain):
            s = chain[k + 1] if k + 1 < len(chain) else -1
            x_prime, _, _ = reference_reverse_step(pipe.unet, x, t, s, alphabar, g)
            ab_s = 1.0 if s < 0 else float(alphabar[s])
            y_s = ab_s**0.5 * y_up + (1 - ab_s) ** 0.5 * torch.randn(x.shape, generator=g)
            x = phi(y_s) + x_prime - phi(x_prime)
    reference = (consistent_clip(x, y, 2) + 1) / 2
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("thresholding", [False, True])
def test_noisy_ddnm_plus_is_ddnm_eq_17_and_19(thresholding):
    """DDNM+ (Wang et al. ICLR 2023, sec. 3.3) written here from Eq. 17 and 19 per singular component, as the authors'
    code (wyhuai/DDNM, functions/svd_operators.py, Lambda / Lambda_noise) applies them, with the same draws. A = 2x2
    average pooling has singular value 1/2 along each block-constant direction, so A+ n has std 2 sigma_y there:
    x^_0|t = x_0|t - lambda_t A+(A x_0|t - y), lambda_t = min(1, sigma_t / (a_t 2 sigma_y)); x_s = mu(x_t, x^_0|t)
    + sigma_t z_null + sqrt(Phi_t) z_range, Phi_t = sigma_t^2 - (a_t lambda_t 2 sigma_y)^2 (z_range: z's block means,
    z_null the rest); x_0|t clipped, or dynamically thresholded (Saharia et al. 2022) when ``thresholding`` (ratio
    0.9, at most 2, so that it differs from clipping)."""
    kwargs = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0) if thresholding else {}
    pipe = make(DDPMHFSuperResolutionPipeline, **kwargs)
    low = F.avg_pool2d(digits(2, seed=6), 2)
    noisy = low + 0.1 * torch.randn(low.shape, generator=gen(8))
    out = pipe(noisy, noise_level=0.1, num_inference_steps=8, generator=gen(1), output_type="pt").images

    alphabar, g = linear_alphabar(), gen(1)
    chain = list(range(875, -1, -125))
    y, sigma_y = noisy * 2 - 1, 0.2
    x = torch.randn((2, 1, 8, 8), generator=g)
    with torch.no_grad():
        for k, t in enumerate(chain):
            s = chain[k + 1] if k + 1 < len(chain) else -1
            ab_t, ab_s = float(alphabar[t]), 1.0 if s < 0 else float(alphabar[s])
            beta = 1 - ab_t / ab_s
            a, b = ab_s**0.5 * beta / (1 - ab_t), (ab_t / ab_s) ** 0.5 * (1 - ab_s) / (1 - ab_t)
            sigma = ((1 - ab_s) / (1 - ab_t) * beta) ** 0.5 if s >= 0 else 0.0
            lam = min(1.0, sigma / (a * 2 * sigma_y))
            eps = pipe.unet(x, t).sample
            x0 = (x - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5
            if thresholding:
                q = torch.quantile(x0.flatten(1).abs(), 0.9, dim=1).clamp(1, 2).view(-1, 1, 1, 1)
                x0 = x0.clamp(-q, q) / q
            else:
                x0 = x0.clamp(-1, 1)
            x0 = x0 - lam * upsample(downsample(x0, 2) - y, 2)  # Eq. 17
            x = a * x0 + b * x  # the posterior mean, Ho eq. 7
            if s >= 0:  # Eq. 19, per component
                z = torch.randn(x.shape, generator=g)
                z_range = upsample(downsample(z, 2), 2)
                phi = max(sigma**2 - (a * lam * 2 * sigma_y) ** 2, 0.0)
                x = x + sigma * (z - z_range) + phi**0.5 * z_range
    torch.testing.assert_close(out, ((x + 1) / 2).clamp(0, 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("sigma_y, k", [(0.02, 3), (0.5, 8)])
def test_ddnm_plus_step_noise_covariance(sigma_y, k):
    """The noise of one DDNM+ step, by Monte Carlo over 4,000 draws at a fixed x_t and a zero model output: every
    null-space direction (within-block differences) carries sigma_t^2, every range direction (a block's mean times
    r = 2, unit norm) Phi_t = sigma_t^2 - (a_t lambda_t r sigma_y)^2 with lambda_t = min(1, sigma_t / (a_t r
    sigma_y)), and the two are uncorrelated. sigma_y 0.02 at step 3 of 10 leaves lambda_t = 1 (Phi_t > 0); 0.5 at
    step 8 makes lambda_t < 1 (Phi_t = 0: the range space takes all its noise from y)."""
    pipe = make(DDPMHFSuperResolutionPipeline)
    scheduler = pipe._ddpm_scheduler()
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[k]
    n = 4000
    x = torch.zeros(n, 1, 4, 4)
    y = torch.zeros(n, 1, 2, 2)
    out = pipe._ddnm_plus_step(scheduler, torch.zeros(n, 1, 4, 4), t, x, y, 2, sigma_y, gen(3))
    s = int(scheduler.previous_timestep(t))
    ab_t, ab_s = float(scheduler.alphas_cumprod[int(t)]), float(scheduler.alphas_cumprod[s])
    beta = 1 - ab_t / ab_s
    a = ab_s**0.5 * beta / (1 - ab_t)
    sigma2 = (1 - ab_s) / (1 - ab_t) * beta  # fixed_small
    lam = min(1.0, sigma2**0.5 / (a * 2 * sigma_y))
    phi = max(sigma2 - (a * lam * 2 * sigma_y) ** 2, 0.0)
    noise = out - out.mean(0, keepdim=True)  # the mean is mu(x_t, x^_0|t), the same for every draw
    blocks = noise.unfold(2, 2, 2).unfold(3, 2, 2).reshape(n, 4, 4)  # (draw, block, pixel of the block)
    range_part = blocks.sum(-1) / 2  # the coordinate along (1, 1, 1, 1) / 2
    null_part = blocks - blocks.mean(-1, keepdim=True)
    se = (2 / n) ** 0.5  # relative standard error of a variance from n Gaussian draws
    assert range_part.var().item() == pytest.approx(phi, abs=5 * se * sigma2)
    # 3 null directions per block out of 4 pixels: the per-pixel variance of the null part is 3/4 sigma_t^2
    assert null_part.var().item() == pytest.approx(0.75 * sigma2, rel=5 * se)
    cross = (range_part[..., None] * null_part).mean().item()
    assert abs(cross) < 5 * se * sigma2
    if sigma_y == 0.5:
        assert lam < 1 and phi == 0.0
    else:
        assert lam == 1.0 and phi > 0.5 * sigma2


# ------------------------------------------------------------------------------------------------ img2img, denoising


def _img2img_timesteps(scheduler, num_inference_steps, strength):
    """Ported from diffusers 0.42.1, pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py,
    StableDiffusionImg2ImgPipeline.get_timesteps (copied: importing that pipeline needs transformers, which ddpm-hf
    does not install): the timesteps an img2img chain of ``strength`` runs, and their count."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    return timesteps, num_inference_steps - t_start


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_strength_picks_t0_as_diffusers_img2img_and_noises_with_the_forward_marginal(spacing):
    pipe = make(DDPMHFImg2ImgPipeline, timestep_spacing=spacing)
    image = digits(1, seed=2)
    n = 400
    for steps, strength in ((20, 0.5), (10, 0.3), (10, 1.0)):
        calls = first_call(pipe)
        out = pipe(image.expand(n, -1, -1, -1), strength=strength, num_inference_steps=steps, generator=gen(),
                   output_type="np")
        # diffusers' own mapping, run on our scheduler's timesteps
        pipe.scheduler.set_timesteps(steps)
        want, count = _img2img_timesteps(pipe.scheduler, steps, strength)
        assert [t for _, t in calls] == want.tolist() and out.unet_calls == count == int(steps * strength)
        assert out.start_timestep == int(want[0])
        if spacing == "trailing":
            assert out.start_timestep + 1 == round(strength * 1000)  # t0 = strength * T (paper t counts from 1)
        # the chain starts from a draw of q(x_t0 | x_0 = image) (Ho eq. 4)
        alphabar = float(pipe.scheduler.alphas_cumprod[out.start_timestep])
        x = calls[0][0]
        target = alphabar**0.5 * (image * 2 - 1)
        assert ((x.mean(0) - target[0]).abs() < 5 * (1 - alphabar) ** 0.5 / n**0.5).all()
        assert abs(x.std(0).mean() - (1 - alphabar) ** 0.5) < 0.05 * (1 - alphabar) ** 0.5 + 0.01
        pipe.unet._forward_pre_hooks.clear()


@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.4])
def test_sigma_starts_the_chain_at_the_matching_t_star_monte_carlo(sigma):
    """y = x_0 + sigma n (pixel units), x_t* = sqrt(alphabar_t*) y in the model's units is a draw of q(x_t* | x_0):
    checked by Monte Carlo against the forward process, and the pipeline's first UNet input is exactly it."""
    scheduler = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2")
    alphabar = scheduler.alphas_cumprod.double()
    t_star = DDPMHFScheduler.timestep_of_noise_ratio(scheduler, 2 * sigma)
    ratio = ((1 - alphabar) / alphabar).sqrt()
    assert (ratio - 2 * sigma).abs().argmin() == t_star and ratio[t_star - 1] < 2 * sigma < ratio[t_star + 1]
    x0 = digits(1, seed=1)[0]
    n = 20000
    noisy = x0 + sigma * torch.randn((n, *x0.shape), generator=gen(6))
    x_t = alphabar[t_star].sqrt().float() * (noisy * 2 - 1)
    forward = scheduler.add_noise((x0 * 2 - 1).expand(n, -1, -1, -1), torch.randn((n, *x0.shape), generator=gen(7)),
                                  torch.full((n,), t_star))
    tolerance = 5 / n**0.5
    assert (x_t.mean(0) - forward.mean(0)).abs().max() < tolerance
    assert (x_t.std(0) - forward.std(0)).abs().max() < tolerance + (ratio[t_star + 1] - ratio[t_star - 1]) / 2
    # the std over draws is sqrt(alphabar_t*) 2 sigma, within the grid's spacing of sqrt(1 - alphabar_t*)
    gap = alphabar[t_star].sqrt() * (ratio[t_star + 1] - ratio[t_star - 1]) / 2
    assert abs(x_t.std(0).mean() - (1 - alphabar[t_star]).sqrt()) < 0.005 + gap

    pipe = DDPMHFImg2ImgPipeline(unet=tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    calls = first_call(pipe)
    out = pipe(noisy[:4], noise_level=sigma, num_inference_steps=50, generator=gen(), output_type="pt")
    assert out.start_timestep == t_star == calls[0][1]
    torch.testing.assert_close(calls[0][0], x_t[:4], atol=1e-6, rtol=0)
    pipe.scheduler.set_timesteps(50)
    assert [t for _, t in calls] == [t_star] + [t for t in pipe.scheduler.timesteps.tolist() if t < t_star]


# ------------------------------------------------------------------------------------------------ loading, saving


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pipe = DDPMHFPipeline(unet=tiny_unet(learned=True), scheduler=DDPMHFScheduler(variance_type="learned_range"))
    folder = tmp_path_factory.mktemp("restoration") / "tiny-ddpm"
    pipe.save_pretrained(folder)
    return folder


def _run_all(pipes, image, mask):
    """Each task pipeline on fixed inputs: {name: (B, H, W, C) array}."""
    inpaint, upscale, img2img = pipes
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return {
        "inpaint": inpaint(image, mask, num_inference_steps=4, jump_length=2, jump_n_sample=2, generator=gen(),
                           output_type="np").images,
        "upscale": upscale(F.avg_pool2d(image, 2), num_inference_steps=4, generator=gen(), output_type="np").images,
        "img2img": img2img(image, strength=0.5, num_inference_steps=4, generator=gen(), output_type="np").images,
        "denoise": img2img(image, noise_level=0.1, num_inference_steps=4, generator=gen(), output_type="np").images,
    }


def test_one_line_from_a_saved_model_and_save_carries_the_task_pipelines(saved, tmp_path):
    for stem in TASK_PIPELINES:
        assert (saved / f"{stem}.py").is_file()
    pipes = [cls.from_pretrained(saved) for cls in
             (DDPMHFInpaintPipeline, DDPMHFSuperResolutionPipeline, DDPMHFImg2ImgPipeline)]
    for pipe in pipes:
        assert type(pipe.scheduler) is DDPMHFScheduler and pipe.scheduler.config.variance_type == "learned_range"
    base = DDPMHFPipeline.from_pretrained(saved)
    from_pipe = [DDPMHFInpaintPipeline.from_pipe(base), DDPMHFSuperResolutionPipeline.from_pipe(base),
                 DDPMHFImg2ImgPipeline.from_pipe(base)]
    assert from_pipe[0].unet is base.unet
    pipes[0].save_pretrained(tmp_path / "again")
    index = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ddpm_hf", "DDPMHFPipeline"]
    assert all((tmp_path / "again" / f"{stem}.py").is_file() for stem in TASK_PIPELINES)
    image, mask = digits(2), torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    a, b = _run_all(pipes, image, mask), _run_all(from_pipe, image, mask)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.slow
def test_no_install_route_runs_the_folder_code(saved, tmp_path):
    """DiffusionPipeline.from_pretrained(folder, custom_pipeline=<task file>, trust_remote_code=True) in a process
    that cannot import ddpm_hf gives the installed pipelines' results."""
    image, mask = digits(2), torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1
    torch.save({"image": image, "mask": mask}, tmp_path / "inputs.pt")
    out = run_python(
        """
        import inspect
        import torch.nn.functional as F
        from diffusers import DiffusionPipeline

        inputs = torch.load(ARGS["inputs"], weights_only=True)
        image, mask = inputs["image"], inputs["mask"]
        pipes = [DiffusionPipeline.from_pretrained(ARGS["folder"], custom_pipeline=stem, trust_remote_code=True)
                 for stem in ("pipeline_ddpm_hf_inpaint", "pipeline_ddpm_hf_super_resolution",
                              "pipeline_ddpm_hf_img2img")]
        g = lambda: torch.Generator().manual_seed(0)
        for p in pipes:
            p.set_progress_bar_config(disable=True)
        images = {
            "inpaint": pipes[0](image, mask, num_inference_steps=4, jump_length=2, jump_n_sample=2, generator=g(),
                                output_type="np").images,
            "upscale": pipes[1](F.avg_pool2d(image, 2), num_inference_steps=4, generator=g(), output_type="np").images,
            "img2img": pipes[2](image, strength=0.5, num_inference_steps=4, generator=g(), output_type="np").images,
            "denoise": pipes[2](image, noise_level=0.1, num_inference_steps=4, generator=g(), output_type="np").images,
        }
        np.savez(ARGS["out"], **images)
        result({"classes": [[type(p).__name__, type(p).__module__, type(p.scheduler).__module__] for p in pipes]})
        """,
        {"folder": str(saved), "inputs": str(tmp_path / "inputs.pt"), "out": str(tmp_path / "remote.npz")},
        env=local_env(tmp_path),
        block_ddpm_hf=True,
    )
    names = [c[0] for c in out["classes"]]
    assert names == ["DDPMHFInpaintPipeline", "DDPMHFSuperResolutionPipeline", "DDPMHFImg2ImgPipeline"]
    assert all(c[1].startswith("diffusers_modules.") and c[2].startswith("diffusers_modules.") for c in out["classes"])
    remote = np.load(tmp_path / "remote.npz")
    pipes = [cls.from_pretrained(saved) for cls in
             (DDPMHFInpaintPipeline, DDPMHFSuperResolutionPipeline, DDPMHFImg2ImgPipeline)]
    local = _run_all(pipes, image, mask)
    for name, images in local.items():
        np.testing.assert_allclose(remote[name], images, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_no_install_route_from_a_hub_repo(saved, tmp_path):
    """The same route from a Hub repository (the loopback Hub of tests/hub_server.py): diffusers fetches the task
    file named by custom_pipeline from the repo."""
    image, mask = digits(2), torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    torch.save({"image": image, "mask": mask}, tmp_path / "inputs.pt")
    with HubServer(tmp_path / "hub") as hub:
        sha = hub.seed_repo("ns/tiny-ddpm", saved)
        out = run_python(
            """
            from diffusers import DiffusionPipeline

            inputs = torch.load(ARGS["inputs"], weights_only=True)
            pipe = DiffusionPipeline.from_pretrained(ARGS["repo"], custom_pipeline="pipeline_ddpm_hf_inpaint",
                                                     trust_remote_code=True)
            pipe.set_progress_bar_config(disable=True)
            images = pipe(inputs["image"], inputs["mask"], num_inference_steps=4, jump_length=2, jump_n_sample=2,
                          generator=torch.Generator().manual_seed(0), output_type="np").images
            np.save(ARGS["out"], images)
            result({"class": [type(pipe).__name__, type(pipe).__module__]})
            """,
            {"repo": "ns/tiny-ddpm", "inputs": str(tmp_path / "inputs.pt"), "out": str(tmp_path / "hub.npy")},
            env=hub_env(hub, tmp_path),
            block_ddpm_hf=True,
        )
        assert ("GET", f"/ns/tiny-ddpm/resolve/{sha}/pipeline_ddpm_hf_inpaint.py") in hub.requests
        # and the sibling it imports relatively (the shared DDPMHFTaskPipelineMixin), which diffusers follows
        assert ("GET", f"/ns/tiny-ddpm/resolve/{sha}/pipeline_ddpm_hf.py") in hub.requests
    assert out["class"][0] == "DDPMHFInpaintPipeline" and out["class"][1].startswith("diffusers_modules.")
    local = DDPMHFInpaintPipeline.from_pretrained(saved)
    local.set_progress_bar_config(disable=True)
    want = local(image, mask, num_inference_steps=4, jump_length=2, jump_n_sample=2, generator=gen(),
                 output_type="np").images
    np.testing.assert_allclose(np.load(tmp_path / "hub.npy"), want, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_commands_write_the_result_and_a_labelled_strip(saved, tmp_path):
    truth = (digits(1)[0, 0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(truth).save(tmp_path / "digit.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    low = F.avg_pool2d(torch.from_numpy(truth / 255.0)[None, None], 2)[0, 0].numpy()
    Image.fromarray((low * 255).round().astype(np.uint8)).save(tmp_path / "low.png")
    out = tmp_path / "out"
    common = ["--num_inference_steps", "4", "--output_dir", str(out)]
    cli_main(["inpaint", str(saved), "--image", str(tmp_path / "digit.png"), "--mask_image", str(tmp_path / "mask.png"),
              "--jump_length", "2", *common])
    cli_main(["upscale", str(saved), "--image", str(tmp_path / "low.png"), "--scale", "2", *common])
    cli_main(["img2img", str(saved), "--image", str(tmp_path / "digit.png"), "--strength", "0.5", *common])
    cli_main(["denoise", str(saved), "--image", str(tmp_path / "digit.png"), "--noise_level", "0.1", *common])
    assert sorted(os.listdir(out)) == sorted(
        f"{stem}_{command}{suffix}.png" for stem, command in
        (("digit", "inpaint"), ("low", "upscale"), ("digit", "img2img"), ("digit", "denoise"))
        for suffix in ("", "_strip")
    )
    repaired = np.asarray(Image.open(out / "digit_inpaint.png"))
    assert repaired.shape == (8, 8)
    np.testing.assert_array_equal(repaired[:, 4:], truth[:, 4:])  # the known half, to the last bit
    upscaled = np.asarray(Image.open(out / "low_upscale.png"), dtype=np.float64) / 255
    given = np.asarray(Image.open(tmp_path / "low.png")) / 255
    assert np.abs(upscaled.reshape(4, 2, 4, 2).mean((1, 3)) - given).max() <= 1 / 255
    strip = Image.open(out / "digit_inpaint_strip.png")
    assert strip.width >= 3 * 64  # input, mask, result, each upscaled from 8 px
    assert Image.open(out / "low_upscale_strip.png").width >= 2 * 64


@pytest.mark.slow
def test_cli_error_is_one_message_and_exit_code_2_in_a_real_process(saved, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gray.png")
    proc = forked_cli("inpaint", saved, "--image", tmp_path / "rgb.png", "--mask", tmp_path / "gray.png", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "ddpm-hf inpaint: error: the image has 3 channels but the model takes 1"
    # the other restoration flag errors: test_bad_input's table


def test_diffusers_ddpm_scheduler_works_too():
    """The pipelines take diffusers' DDPMScheduler (the same API) as well."""
    pipe = DDPMHFInpaintPipeline(unet=tiny_unet(), scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    image, mask = digits(1), torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    for method in ("repaint", "ddnm"):
        out = pipe(image, mask, method=method, num_inference_steps=4, jump_length=2, generator=gen(),
                   output_type="pt").images
        torch.testing.assert_close(out[..., 4:, :], image[..., 4:, :], atol=1e-6, rtol=0)

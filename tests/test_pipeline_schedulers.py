"""Any diffusers scheduler in DDPMHFPipeline (issue 17 sec. 1): swapped in with from_config from our scheduler's
config, on one- and three-channel UNets with fixed and learned variances; the pipeline does what diffusers' own
pipelines do (x_T * init_noise_sigma, scale_model_input, step arguments by signature) and splits the variance channels
off by the image's channel count before a scheduler that does not model variance. Also through the ``--scheduler``
names (ddpm_hf.sampling.SCHEDULERS), the CLI, and in a process that cannot import ddpm_hf."""

import functools
import inspect

import diffusers
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from ddpm_hf import DDPMHFImg2ImgPipeline, DDPMHFPipeline, DDPMHFScheduler
from ddpm_hf.errors import BadArgument
from ddpm_hf.sampling import SCHEDULERS, make_scheduler

from helpers import RecordingUNet, forked_cli, local_env, run_python
from helpers import tiny_unet as helpers_tiny_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the samplers the issue names, as diffusers users swap them: class and from_config overrides
SWAPS = {
    "DDPMScheduler": ("DDPMScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "DPM-Solver++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM-Solver++ SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM-Solver single-step": ("DPMSolverSinglestepScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
}
STEPS = 6


def tiny_unet(channels, learned, cls=UNet2DModel):
    return helpers_tiny_unet(channels, learned, cls=cls, seed=channels * 10 + learned)


def pipeline(unet, learned, scheduler_name=None, overrides=None, **scheduler_kwargs):
    ours = DDPMHFScheduler(variance_type="learned_range" if learned else "fixed_small", **scheduler_kwargs)
    scheduler = ours if scheduler_name is None else getattr(diffusers, scheduler_name).from_config(
        ours.config, **(overrides or {}))
    pipe = DDPMHFPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def spy_on_step(scheduler):
    """Record the model_output shape of every ``scheduler.step`` call (the signature stays visible to inspect)."""
    shapes, step = [], scheduler.step

    @functools.wraps(step)
    def recording_step(model_output, *args, **kwargs):
        shapes.append(tuple(model_output.shape))
        return step(model_output, *args, **kwargs)

    scheduler.step = recording_step
    return shapes


@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(SWAPS))
def test_every_scheduler_samples_every_model(name, channels, learned):
    class_name, overrides = SWAPS[name]
    pipe = pipeline(tiny_unet(channels, learned), learned, class_name, overrides)
    shapes = spy_on_step(pipe.scheduler)
    images = [pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS,
                   output_type="pt").images for seed in (0, 1)]
    assert images[0].shape == (2, channels, 8, 8)
    assert all(bool(torch.isfinite(x).all()) for x in images)
    assert (images[0] - images[1]).abs().max() > 1e-3  # the seed matters: a real chain, not a constant
    # the variance channels reach only a scheduler that models variance (diffusers' DDPMScheduler here)
    kept = learned and class_name == "DDPMScheduler"
    assert shapes and set(shapes) == {(2, channels * (2 if kept else 1), 8, 8)}
    assert len(shapes) == 2 * len(pipe.scheduler.timesteps)  # two chains


def test_every_cli_name_makes_its_scheduler_from_our_config():
    assert sorted(SCHEDULERS) == sorted(["ddpm", "ddim", "dpmsolver++", "dpmsolver-sde", "unipc", "euler", "euler-a",
                                         "heun"])
    # the model's noise process survives from_config, also the values left at their defaults (diffusers would replace
    # those by the target's defaults: Heun's beta_start 0.00085, DPM-Solver's "linspace" spacing)
    for config in (DDPMHFScheduler().config, DDPMHFScheduler(beta_schedule="squaredcos_cap_v2").config):
        for name in SCHEDULERS:
            scheduler = make_scheduler(name, config)
            torch.testing.assert_close(scheduler.alphas_cumprod, DDPMHFScheduler.from_config(config).alphas_cumprod)
            assert scheduler.config.timestep_spacing == config.timestep_spacing, name
            their = getattr(diffusers, SWAPS["Heun"][0]).from_config(config)  # as a user swaps, by hand
            torch.testing.assert_close(their.alphas_cumprod, DDPMHFScheduler.from_config(config).alphas_cumprod)
    config = DDPMHFScheduler(variance_type="learned_range").config
    assert type(make_scheduler("ddpm", config)) is DDPMHFScheduler
    assert make_scheduler("dpmsolver-sde", config).config.algorithm_type == "sde-dpmsolver++"
    assert make_scheduler("dpmsolver++", make_scheduler("dpmsolver-sde", config).config).config.algorithm_type == (
        "dpmsolver++")
    with pytest.raises(BadArgument, match="choose from ddpm, ddim"):
        make_scheduler("plms", config)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_sampler_on_a_four_channel_learned_variance_model(name):
    """Every entry of SCHEDULERS on a 4-channel model with learned variances (8 output channels): the pipeline hands a
    non-variance scheduler the 4 prediction channels, and DPM-Solver's own learned-variance cut ([:, :3]) must not
    truncate them (make_scheduler sets variance_type None). The result equals a loop written here: the scheduler
    stepped on the UNet's first 4 channels, x_T ~ N(0, I) scaled by init_noise_sigma."""
    unet = tiny_unet(4, True)
    pipe = DDPMHFPipeline(unet=unet, scheduler=make_scheduler(name, DDPMHFScheduler(variance_type="learned_range")
                                                              .config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="pt")
    assert out.images.shape == (1, 4, 8, 8)
    if name == "ddpm":
        return  # its learned variances make it a different chain (tested against Ho / Nichol elsewhere)
    scheduler = make_scheduler(name, DDPMHFScheduler(variance_type="learned_range").config)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((1, 4, 8, 8), generator=generator) * scheduler.init_noise_sigma
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t).sample[:, :4]
            x = scheduler.step(eps, t, x, **extra).prev_sample
    torch.testing.assert_close(out.images, (x / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_euler_chain_starts_at_init_noise_sigma_and_scales_every_unet_input(spacing):
    """Euler works on x / sqrt(alphabar) (Karras et al. 2022, sigma = sqrt((1 - alphabar) / alphabar)): its x_T is
    z times the std of that at the first step, sqrt(sigma_0^2 + 1) (x_t ~ N(0, I) there; diffusers' "leading"
    spacing) or sigma_0 (at t = T - 1, "linspace"); the UNet sees c_in x = x / sqrt(sigma^2 + 1) (its
    scale_model_input), every later input the state after the previous step scaled by its sigma."""
    unet = tiny_unet(1, True, RecordingUNet)
    pipe = pipeline(unet, True, "EulerDiscreteScheduler", timestep_spacing=spacing)
    states = []
    pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS, output_type="pt",
         callback_on_step_end=lambda p, i, t, tensors: states.append(tensors["image"].clone()) or {})
    z = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    sigmas = pipe.scheduler.sigmas
    x_T = z * ((sigmas[0] ** 2 + 1) ** 0.5 if spacing == "leading" else sigmas[0])
    assert float(sigmas[0]) > 10  # a forgotten init_noise_sigma or input scaling fails by a factor > 10
    assert len(unet.calls) == STEPS
    torch.testing.assert_close(unet.calls[0][0], x_T / (sigmas[0] ** 2 + 1) ** 0.5)
    for i in range(1, STEPS):
        torch.testing.assert_close(unet.calls[i][0], states[i - 1] / (sigmas[i] ** 2 + 1) ** 0.5)


@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned"])
def test_ddim_eta_0_update_is_song_eq_12(learned):
    """Each DDIM step with eta = 0 is Song et al. 2021 eq. 12 with sigma_t = 0:
    x_prev = sqrt(a_prev) (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) + sqrt(1 - a_prev) eps, a = alphabar, eps the UNet's
    prediction channels (the variance channels are not eps), a_prev = 1 after the last step (set_alpha_to_one)."""
    unet = tiny_unet(3, learned, RecordingUNet)
    pipe = pipeline(unet, learned, "DDIMScheduler", clip_sample=False)
    states = []
    pipe(batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS, output_type="pt",
         eta=0.0, callback_on_step_end=lambda p, i, t, tensors: states.append(tensors["image"].clone()) or {})
    alphabar = DDPMHFScheduler().alphas_cumprod.double()
    timesteps = pipe.scheduler.timesteps.tolist()
    assert timesteps == [1000 // STEPS * k for k in range(STEPS - 1, -1, -1)]  # "leading", from our config
    for i, t in enumerate(timesteps):
        x_t, unet_t, _, output = unet.calls[i]
        assert int(unet_t) == t
        eps = output[:, :3].double()
        a_t = alphabar[t]
        a_prev = alphabar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x_t.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()  # Song eq. 12, "predicted x_0"
        want = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # + "direction pointing to x_t", sigma_t = 0
        torch.testing.assert_close(states[i].double(), want, rtol=1e-4, atol=1e-4)


def test_a_scheduler_without_explicit_timesteps_says_so():
    pipe = pipeline(tiny_unet(1, False), False, "DDIMScheduler")
    with pytest.raises(ValueError, match="DDIMScheduler.set_timesteps takes no explicit timesteps"):
        pipe(timesteps=[500, 100, 0], output_type="pt")


@pytest.mark.parametrize("name", ["DDIM", "DPM-Solver++ 2M", "Euler", "Heun"])
def test_img2img_with_a_swapped_scheduler(name):
    """SDEdit picks its start as diffusers' img2img pipelines (the last int(n * strength) of the n steps) with any
    scheduler; denoising (noise_level) with those whose set_timesteps takes timesteps and keeps them (not DDIM, not
    Heun: a clear error)."""
    class_name, overrides = SWAPS[name]
    base = pipeline(tiny_unet(1, True), True, class_name, overrides)
    pipe = DDPMHFImg2ImgPipeline.from_pipe(base, torch_dtype=None)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(2, 1, 8, 8)
    out = pipe(image, strength=0.5, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
               output_type="pt")
    assert out.images.shape == (2, 1, 8, 8) and bool(torch.isfinite(out.images).all())
    assert out.unet_calls == len(pipe.scheduler.timesteps) - STEPS // 2 * pipe.scheduler.order
    if class_name in ("DDIMScheduler", "HeunDiscreteScheduler"):
        with pytest.raises(ValueError, match="set_timesteps cannot take"):
            pipe(image, noise_level=0.1, num_inference_steps=STEPS)
        return
    out = pipe(image, noise_level=0.1, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
               output_type="pt")
    assert out.images.shape == (2, 1, 8, 8) and bool(torch.isfinite(out.images).all())
    # the chain starts where the forward marginal's noise-to-signal ratio sqrt((1 - alphabar) / alphabar) is
    # 2 sigma = 0.2 in the model's [-1, 1] units (Ho eq. 4)
    alphabar = DDPMHFScheduler().alphas_cumprod.double()
    assert out.start_timestep == int((((1 - alphabar) / alphabar).sqrt() - 0.2).abs().argmin())


# ------------------------------------------------------------------------------------------------ saved models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A learned-variance one-channel pipeline saved with save_pretrained, and its images with every swap."""
    pipe = pipeline(tiny_unet(1, True), True)
    folder = tmp_path_factory.mktemp("saved") / "tiny-learned"
    pipe.save_pretrained(folder)
    images = {}
    for name, (class_name, overrides) in SWAPS.items():
        swapped = pipeline(pipe.unet, True, class_name, overrides)
        images[name] = swapped(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                               output_type="np").images
    return folder, images


@pytest.mark.slow
def test_every_swap_through_trust_remote_code_without_ddpm_hf(saved, tmp_path):
    folder, want = saved
    run_python(
        """
        import diffusers
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(ARGS["folder"], trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        assert type(pipe).__module__.startswith("diffusers_modules."), type(pipe).__module__
        ours = pipe.scheduler.config
        images = {}
        for name, (class_name, overrides) in ARGS["swaps"].items():
            pipe.scheduler = getattr(diffusers, class_name).from_config(ours, **overrides)
            images[name] = pipe(batch_size=2, generator=torch.Generator().manual_seed(0),
                                num_inference_steps=ARGS["n"], output_type="np").images
        np.savez(ARGS["out"], **images)
        result({})
        """,
        {"folder": str(folder), "swaps": SWAPS, "n": STEPS, "out": str(tmp_path / "remote.npz")},
        env=local_env(tmp_path), block_ddpm_hf=True,
    )
    remote = np.load(tmp_path / "remote.npz")
    for name, images in want.items():
        np.testing.assert_allclose(remote[name], images, atol=1e-6, rtol=0, err_msg=name)


@pytest.mark.slow
def test_cli_sample_with_a_scheduler_name(saved, tmp_path):
    folder, want = saved
    r = forked_cli("sample", folder, "--scheduler", "dpmsolver++", "--num_inference_steps", STEPS, "--num_images", "2",
                   "--seed", "0", "--output_dir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    # image i is drawn with the generator seeded seed + i: compare with the pipeline's images one at a time
    pipe = pipeline(DDPMHFPipeline.from_pretrained(folder).unet, True, "DPMSolverMultistepScheduler",
                    {"algorithm_type": "dpmsolver++"})
    for i in range(2):
        image = pipe(generator=[torch.Generator().manual_seed(i)], num_inference_steps=STEPS, output_type="np").images
        got = np.asarray(Image.open(tmp_path / "out" / f"sample_{i:04d}.png"), dtype=int)
        assert np.abs(got - np.round(image[0, ..., 0] * 255)).max() <= 1
    r = forked_cli("sample", folder, "--scheduler", "plms")
    assert r.returncode == 2 and "invalid choice: 'plms'" in r.stderr



@pytest.mark.slow
def test_evaluate_samples_with_the_scheduler_named_and_bounds_with_the_models(saved, tmp_path, digits_classifier):
    from ddpm_hf.evaluation.report import EvaluationConfig, evaluate

    folder, _ = saved
    with pytest.raises(BadArgument, match="scheduler plms: choose from ddpm, ddim"):
        EvaluationConfig(scheduler="plms")
    reports = {}
    for name in (None, "ddim"):
        config = EvaluationConfig(metrics=("bpd", "digits"), num_samples=16, steps=(4,), batch_size=16,
                                  bpd_timesteps=4, max_eval_images=8, scheduler=name, name=str(name),
                                  output_dir=str(tmp_path))
        reports[name] = evaluate(str(folder), config, progress=False, log=lambda *args: None)
    # the bound (which needs the DDPM posterior, not DDIM's step) ran on the model's scheduler both times
    assert reports["ddim"]["bpd"]["bits_per_dim"] == reports[None]["bpd"]["bits_per_dim"]
    assert reports["ddim"]["scheduler"] == "ddim" and reports[None]["scheduler"] == "DDPMHFScheduler"
    fd = {name: report["sampling"][0]["scores"]["digits_fd"]["value"] for name, report in reports.items()}
    assert fd["ddim"] != fd[None]  # other samples


def test_from_pipe_drops_only_diffusers_empty_float32_notice(caplog):
    """diffusers 0.42's ModelMixin.to(dtype) warns "There are modules in UNet2DModel that should be kept in float32:
    []" for every cast, and from_pipe always casts: our pipelines' from_pipe filters exactly that empty notice (the
    control, the same cast outside from_pipe, still logs it) and hands the same components on."""
    from ddpm_hf.pipeline_ddpm_hf_inpaint import DDPMHFInpaintPipeline

    def notices():
        found = [r for r in caplog.records if "kept in float32" in r.getMessage()]
        caplog.clear()
        return found

    base = pipeline(tiny_unet(1, True), True)
    caplog.clear()
    copies = [DDPMHFPipeline.from_pipe(base), DDPMHFInpaintPipeline.from_pipe(base, torch_dtype=None)]
    assert notices() == []
    assert all(copy.unet is base.unet and copy.scheduler.config == base.scheduler.config for copy in copies)
    base.unet.to(dtype=torch.float32)
    assert ["should be kept in float32: []" in r.getMessage() for r in notices()] == [True]

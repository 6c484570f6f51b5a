"""UNet presets and DDPMHFPipeline against diffusers' DDPMPipeline."""

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from ddpm_hf import UNET_PRESETS, DDPMHFPipeline, DDPMHFScheduler, build_unet, unet_config


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_cifar10_preset_is_the_ddpm_paper_network():
    config = unet_config("ddpm-cifar10-32")
    # the published google/ddpm-cifar10-32 conversion
    assert config["block_out_channels"] == (128, 256, 256, 256)
    assert config["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    assert config["up_block_types"] == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    assert (config["layers_per_block"], config["flip_sin_to_cos"], config["freq_shift"]) == (2, False, 1)
    assert (config["downsample_padding"], config["norm_eps"], config["dropout"]) == (0, 1e-6, 0.1)
    assert _params(build_unet("ddpm-cifar10-32")) == 35_746_307


def test_256_presets_follow_the_paper():
    for name in ("ddpm-celebahq-256", "ddpm-lsun-256"):
        config = unet_config(name)
        assert config["block_out_channels"] == (128, 128, 256, 256, 512, 512)  # ch_mult 1,1,2,2,4,4
        sizes = [256 // 2**i for i in range(6)]
        attention = [s for s, b in zip(sizes, config["down_block_types"]) if b.startswith("Attn")]
        assert attention == [16]
    assert _params(build_unet("ddpm-celebahq-256")) == _params(build_unet("ddpm-lsun-256")) == 113_673_219


# the paper-size networks (not the cpu-* ones) take seconds each: slow
@pytest.mark.parametrize("name", [name if name.startswith("cpu-") else pytest.param(name, marks=pytest.mark.slow)
                                  for name in sorted(UNET_PRESETS)])
def test_every_preset_runs_forward_and_backward(name):
    config = unet_config(name)
    # the 256x256 networks are fully convolutional: run them on 32x32 to keep the test fast on a CPU
    size = min(config["sample_size"], 32)
    torch.manual_seed(0)
    # the cpu-* presets both ways; a paper-size one (seconds per build) once, RGB with learned variances
    for channels, learned in ((1, False), (3, True)) if name.startswith("cpu-") else ((3, True),):
        unet = build_unet(name, channels=channels, learned_variance=learned)
        x = torch.randn(2, channels, size, size)
        out = unet(x, torch.tensor([3, 900])).sample
        assert out.shape == (2, channels * (2 if learned else 1), size, size)
        out.square().mean().backward()
        grads = [p.grad for p in unet.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)


# Every preset pinned: parameters (at its default channels, fixed variances), block channels, resolution, channels.
# ddpm-cifar10-32 is the published google/ddpm-cifar10-32 conversion's 35,746,307; the 256 presets and
# train_unconditional.py's UNet share one architecture (113,673,219).
PINNED = {
    "ddpm-cifar10-32": (35746307, (128, 256, 256, 256), 32, 3),
    "ddpm-celebahq-256": (113673219, (128, 128, 256, 256, 512, 512), 256, 3),
    "ddpm-lsun-256": (113673219, (128, 128, 256, 256, 512, 512), 256, 3),
    "improved-ddpm-cifar10-32": (49062787, (128, 256, 256, 256), 32, 3),
    "diffusers-unconditional": (113673219, (128, 128, 256, 256, 512, 512), 64, 3),
    "cpu-8": (1623169, (32, 64, 64), 8, 1),
    "cpu-8-small": (408641, (16, 32, 32), 8, 1),
    "cpu-16": (3691713, (32, 64, 128), 16, 1),
    "cpu-28": (3691713, (32, 64, 128), 28, 1),
    "cpu-28-small": (989217, (16, 32, 64), 28, 1),
    "cpu-32": (8949761, (64, 128, 128, 128), 32, 1),
}


def test_every_preset_is_pinned():
    assert sorted(PINNED) == sorted(UNET_PRESETS)
    for name, (parameters, channels, resolution, in_channels) in PINNED.items():
        config = unet_config(name)
        with torch.device("meta"):  # the shapes only: no memory for the 113M networks
            unet = UNet2DModel(**config)
        assert sum(p.numel() for p in unet.parameters()) == parameters, name
        assert (tuple(config["block_out_channels"]), config["sample_size"], config["in_channels"]) == (
            channels, resolution, in_channels), name


def test_learned_variance_doubles_out_channels_and_overrides_apply():
    assert unet_config("cpu-8", learned_variance=True)["out_channels"] == 2
    assert unet_config("cpu-8", channels=3, learned_variance=True)["out_channels"] == 6
    assert unet_config("cpu-16", sample_size=20)["sample_size"] == 20
    with pytest.raises(ValueError, match="unknown UNet preset"):
        unet_config("cifar")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet("cpu-8").eval()


def _images(pipe, seed=0, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    kwargs.setdefault("num_inference_steps", 20)
    kwargs.setdefault("output_type", "np")
    return pipe(batch_size=kwargs.pop("batch_size", 2), generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_same_images_as_diffusers_ddpm_pipeline(unet):
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large")
    theirs = _images(DDPMPipeline(unet=unet, scheduler=scheduler))
    with_their_scheduler = _images(DDPMHFPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config)))
    ours = _images(DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler.from_config(scheduler.config)))
    np.testing.assert_array_equal(with_their_scheduler, theirs)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert theirs.std() > 0.01  # real images, not a constant


def test_list_of_generators_matches_diffusers(unet):
    def gens():
        return [torch.Generator().manual_seed(10 + i) for i in range(3)]

    theirs = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    ours = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler())
    for p in (theirs, ours):
        p.set_progress_bar_config(disable=True)
    a = theirs(batch_size=3, generator=gens(), num_inference_steps=10, output_type="np").images
    b = ours(batch_size=3, generator=gens(), num_inference_steps=10, output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # image i depends only on generator i
    c = ours(batch_size=1, generator=gens()[1:2], num_inference_steps=10, output_type="np").images
    np.testing.assert_allclose(c[0], b[1], atol=1e-5, rtol=0)


def test_output_types_and_grayscale(unet):
    pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler())
    arr = _images(pipe, num_inference_steps=5)
    assert arr.shape == (2, 8, 8, 1) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    pt = _images(pipe, num_inference_steps=5, output_type="pt")
    assert pt.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    pil = _images(pipe, num_inference_steps=5, output_type="pil")
    assert all(isinstance(im, Image.Image) and im.mode == "L" and im.size == (8, 8) for im in pil)
    np.testing.assert_allclose(np.asarray(pil[0]) / 255.0, arr[0, :, :, 0], atol=1 / 255 + 1e-6)


def test_rgb_and_custom_timesteps():
    torch.manual_seed(1)
    unet = build_unet("cpu-8", channels=3).eval()
    scheduler = DDPMScheduler()
    ours = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler())
    images = _images(ours, timesteps=[999, 700, 300, 50, 0])
    assert images.shape == (2, 8, 8, 3)
    # the same timesteps through diffusers' scheduler, stepped by hand as DDPMPipeline does
    scheduler.set_timesteps(timesteps=[999, 700, 300, 50, 0])
    g = torch.Generator().manual_seed(0)
    from diffusers.utils.torch_utils import randn_tensor

    x = randn_tensor((2, 3, 8, 8), generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=g).prev_sample
    want = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, want, atol=1e-5, rtol=0)


def test_learned_variance_unet():
    torch.manual_seed(2)
    unet = build_unet("cpu-8", learned_variance=True).eval()
    # with a learned_range scheduler the variance channels are used, exactly as diffusers' DDPMPipeline does
    theirs = _images(DDPMPipeline(unet=unet, scheduler=DDPMScheduler(variance_type="learned_range")))
    ours = _images(DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler(variance_type="learned_range")))
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    # with a fixed-variance scheduler they are dropped: same as a UNet that only has the first half of the channels
    fixed = _images(DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler()))
    assert fixed.shape == (2, 8, 8, 1)
    half = UNet2DModel(**{**unet.config, "out_channels": 1}).eval()
    state = unet.state_dict()
    state["conv_out.weight"] = state["conv_out.weight"][:1]
    state["conv_out.bias"] = state["conv_out.bias"][:1]
    half.load_state_dict(state)
    np.testing.assert_allclose(fixed, _images(DDPMHFPipeline(unet=half, scheduler=DDPMHFScheduler())), atol=1e-6)


def test_intermediates_and_callback(unet):
    pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler())
    pipe.set_progress_bar_config(disable=True)
    seen = []

    def callback(p, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["image"].shape)))
        return {"image": tensors["image"].clamp(-0.5, 0.5)}

    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6, output_type="pt",
               return_intermediates=True, callback_on_step_end=callback)
    assert [s[0] for s in seen] == list(range(6)) and [s[1] for s in seen] == pipe.scheduler.timesteps.tolist()
    assert len(out.intermediates) == 7 and all(x.shape == (2, 1, 8, 8) for x in out.intermediates)
    torch.testing.assert_close(out.intermediates[-1], out.images)
    # the callback's clamped image was fed back: every later state lies in [0.25, 0.75] after mapping to [0, 1]
    assert out.images.min() >= 0.25 - 1e-6 and out.images.max() <= 0.75 + 1e-6
    images, chain = pipe(batch_size=1, num_inference_steps=3, output_type="np", return_intermediates=True,
                         return_dict=False)
    assert images.shape == (1, 8, 8, 1) and len(chain) == 4


def test_bad_pipeline_input(unet):
    pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler())
    with pytest.raises(ValueError, match="batch_size"):
        pipe(batch_size=0)
    with pytest.raises(ValueError, match="generators"):
        pipe(batch_size=2, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="jpeg", num_inference_steps=2)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(num_inference_steps=0)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(num_inference_steps=2, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["x"])

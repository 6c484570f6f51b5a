"""Class-conditional sampling with classifier-free guidance (issue 18 sec. 2): ``pipe(class_labels=...,
guidance_scale=...)`` on a UNet2DModel with ``num_class_embeds = num_classes + 1`` whose last id is the null class
(Ho & Salimans 2022).

The guidance is checked against the formula written here, eps = eps(x, null) + s (eps(x, c) - eps(x, null)) with
the variance channels from the conditional branch, computed from two separate UNet calls; the pipeline makes one
batched call. Tiny randomly initialised UNets: shapes, errors and equations, not sample quality."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, UNet2DModel
from PIL import Image

from ddpm_hf import (DDPMHFImg2ImgPipeline, DDPMHFInpaintPipeline, DDPMHFPipeline, DDPMHFScheduler,
                     DDPMHFSuperResolutionPipeline)
from ddpm_hf.pipeline_ddpm_hf_denoiser import DEFAULT_GUIDANCE_SCALE

from helpers import RecordingUNet, cli_in_process, forked_cli, local_env, run_python
from helpers import tiny_unet as helpers_tiny_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLASSES = 4
NULL = NUM_CLASSES  # the "no label" id, stored in model_index.json (null_class_id)
ID2LABEL = {0: "zero", 1: "one, uno", 2: "two", 3: "three"}
STEPS = 5


def tiny_unet(channels=1, learned=True, conditional=True, cls=RecordingUNet):
    unet = helpers_tiny_unet(channels, learned, NUM_CLASSES + 1 if conditional else None, cls,
                             seed=7 + channels + 2 * learned)
    if conditional:  # a visible class embedding (diffusers initialises it N(0, 1) already; make it matter more)
        with torch.no_grad():
            unet.class_embedding.weight.mul_(3)
    return unet


def conditional_pipe(unet=None, scheduler=None, learned=True):
    unet = unet if unet is not None else tiny_unet(learned=learned)
    scheduler = scheduler or DDPMHFScheduler(variance_type="learned_range" if learned else "fixed_small")
    pipe = DDPMHFPipeline(unet=unet, scheduler=scheduler, id2label=ID2LABEL, null_class_id=NULL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_copy(unet):
    """The same network as a plain UNet2DModel (no recording), for the test's own separate calls."""
    copy = UNet2DModel.from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    return copy.eval()


def run(pipe, **kwargs):
    outputs = []
    kwargs.setdefault("num_inference_steps", STEPS)
    images = pipe(generator=torch.Generator().manual_seed(0), output_type="pt",
                  callback_on_step_end_tensor_inputs=["image", "model_output"],
                  callback_on_step_end=lambda p, i, t, tensors: outputs.append(tensors["model_output"].clone()) or {},
                  **kwargs).images
    return images, outputs


# ------------------------------------------------------------------------------------------------ the guidance


@pytest.mark.parametrize("scheduler", ["ours", "dpmsolver++"])
@pytest.mark.parametrize("learned", [True, False], ids=["learned", "fixed"])
def test_guidance_is_ho_salimans_eq_6_in_one_batched_call(learned, scheduler):
    """Every step is one UNet call on [x, x] with labels [c, null]; the output the scheduler gets is
    eps = eps_null + s (eps_c - eps_null) (Ho & Salimans eq. 6 with w = s - 1), the variance channels (kept for our
    scheduler with learned variances) those of the conditional branch, computed here from two separate calls."""
    unet = tiny_unet(learned=learned)
    ours = DDPMHFScheduler(variance_type="learned_range" if learned else "fixed_small")
    pipe = conditional_pipe(unet, ours if scheduler == "ours" else DPMSolverMultistepScheduler.from_config(
        ours.config))
    s = 2.5
    _, outputs = run(pipe, class_labels=[3, 1], guidance_scale=s)
    reference = plain_copy(unet)
    assert len(unet.calls) == len(outputs) == STEPS
    for (x2, t, labels, _), given in zip(unet.calls, outputs):
        assert x2.shape[0] == 4 and labels == [3, 1, NULL, NULL]
        x = x2[:2]
        torch.testing.assert_close(x2[2:], x)
        cond = reference(x, t, class_labels=torch.tensor([3, 1])).sample
        uncond = reference(x, t, class_labels=torch.tensor([NULL, NULL])).sample
        eps = uncond[:, :1] + s * (cond[:, :1] - uncond[:, :1])
        want = torch.cat([eps, cond[:, 1:]], dim=1) if learned and scheduler == "ours" else eps
        assert given.shape == want.shape
        torch.testing.assert_close(given, want, rtol=1e-4, atol=1e-5)
        assert (cond - uncond).abs().max() > 1e-2  # the label matters: the check above is not vacuous


def test_guidance_scale_1_is_the_conditional_model_and_0_the_null_class():
    unet = tiny_unet()
    pipe = conditional_pipe(unet)
    _, outputs = run(pipe, class_labels=[2, 0], guidance_scale=1.0)
    assert [c[2] for c in unet.calls] == [[2, 0]] * STEPS  # one unbatched conditional call per step
    for (x, t, _, out), given in zip(unet.calls, outputs):
        torch.testing.assert_close(given, out)
    # s = 0: eps = eps_null, the unconditional model, which is also what sampling without class_labels draws (with
    # fixed variances: learned ones come from the conditional branch)
    unet = tiny_unet(learned=False)
    pipe = conditional_pipe(unet, learned=False)
    unconditional, _ = run(pipe, batch_size=2)
    assert [c[2] for c in unet.calls[-STEPS:]] == [[NULL, NULL]] * STEPS
    zero, _ = run(pipe, class_labels=[2, 0], guidance_scale=0.0)
    torch.testing.assert_close(zero, unconditional, rtol=0, atol=1e-5)
    guided, _ = run(pipe, class_labels=[2, 0])  # the default scale
    assert DEFAULT_GUIDANCE_SCALE > 1 and (guided - unconditional).abs().max() > 1e-2
    torch.testing.assert_close(guided, run(pipe, class_labels=[2, 0], guidance_scale=DEFAULT_GUIDANCE_SCALE)[0])


@pytest.mark.parametrize("name", ["dpmsolver++", "euler"])
def test_conditional_sampling_with_swapped_schedulers(name):
    ours = DDPMHFScheduler(variance_type="learned_range")
    cls = DPMSolverMultistepScheduler if name == "dpmsolver++" else EulerDiscreteScheduler
    pipe = conditional_pipe(tiny_unet(channels=3), cls.from_config(ours.config))
    images = pipe(class_labels=["three", 0, "uno"], generator=torch.Generator().manual_seed(0),
                  num_inference_steps=STEPS, output_type="pt").images
    assert images.shape == (3, 3, 8, 8) and bool(torch.isfinite(images).all())


# ------------------------------------------------------------------------------------------------ labels


def test_label_names_as_diffusers_dit():
    pipe = conditional_pipe()
    assert pipe.labels == {"one": 1, "three": 3, "two": 2, "uno": 1, "zero": 0}  # comma-separated names split
    assert pipe.get_label_ids(["uno", "zero", "three"]) == [1, 0, 3]
    assert pipe.get_label_ids("two") == [2]
    with pytest.raises(ValueError, match=r"\['seven'\] are not known"):
        pipe.get_label_ids(["seven"])
    by_name, _ = run(pipe, class_labels=["three", "uno"])
    by_id, _ = run(pipe, class_labels=[3, 1])
    torch.testing.assert_close(by_name, by_id, rtol=0, atol=0)


def test_bad_labels_get_a_clear_error():
    pipe = conditional_pipe()
    cases = [
        (dict(class_labels=[NUM_CLASSES + 1]), r"class ids \[5\] out of range: this model's classes are 0..3"),
        (dict(class_labels=[-1, 2]), r"class ids \[-1\] out of range"),
        (dict(class_labels=[NULL]), "the null class 4 is drawn by giving no class_labels"),
        (dict(class_labels=["seven"]), "not known"),
        (dict(class_labels=[1, 2], batch_size=3), "2 class_labels for batch_size 3"),
        (dict(class_labels=[]), "class_labels is empty"),
        (dict(class_labels=[1, 2], generator=[torch.Generator()]), "1 generators for a batch of 2"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe(num_inference_steps=2, **kwargs)
    unconditional = DDPMHFPipeline(unet=tiny_unet(conditional=False),
                                   scheduler=DDPMHFScheduler(variance_type="learned_range"))
    with pytest.raises(ValueError, match="this UNet is unconditional"):
        unconditional(class_labels=[1], num_inference_steps=2)
    # the stored class ids must fit the UNet's class embedding (num_class_embeds = NULL + 1)
    for id2label, null, message in [
            (ID2LABEL, NULL + 1, r"class ids \[5\] \(id2label / null_class_id\) are not in this UNet's class embedding"),
            ({**ID2LABEL, 7: "seven"}, NULL, r"class ids \[7\]"),
            ({**ID2LABEL, NULL: "none"}, NULL, "null_class_id 4 is also a named class"),
    ]:
        with pytest.raises(ValueError, match=message):
            DDPMHFPipeline(unet=tiny_unet(), scheduler=DDPMHFScheduler(), id2label=id2label, null_class_id=null)
    with pytest.raises(ValueError, match="this UNet is unconditional"):
        DDPMHFPipeline(unet=tiny_unet(conditional=False), scheduler=DDPMHFScheduler(), null_class_id=0)
    no_null = DDPMHFPipeline(unet=tiny_unet(), scheduler=DDPMHFScheduler())
    with pytest.raises(ValueError, match="no null_class_id: give class_labels"):
        no_null(num_inference_steps=2)


# ------------------------------------------------------------------------------------------------ task pipelines


def test_img2img_and_inpaint_take_class_labels_and_from_pipe_keeps_the_classes(tmp_path):
    unet = tiny_unet()
    base = conditional_pipe(unet)
    image = torch.rand(1, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    for cls in (DDPMHFImg2ImgPipeline, DDPMHFInpaintPipeline):
        pipe = cls.from_pipe(base, unet=unet, torch_dtype=None)  # (a subclass is not handed on by itself)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.config.null_class_id == NULL and pipe.config.id2label == ID2LABEL
        assert pipe.get_label_ids(["two"]) == [2]
        unet.calls.clear()
        if cls is DDPMHFImg2ImgPipeline:
            out = pipe(image, strength=0.6, class_labels=["two", 3], num_inference_steps=STEPS, output_type="pt")
        else:
            out = pipe(image, mask, class_labels=["two", 3], num_inference_steps=STEPS, jump_n_sample=1,
                       output_type="pt")
        assert out.images.shape == (2, 1, 8, 8)  # one image, two classes: the image is repeated
        assert unet.calls and all(c[2] == [2, 3, NULL, NULL] for c in unet.calls)
        with pytest.raises(ValueError, match="out of range"):
            pipe(image, *([mask] if cls is DDPMHFInpaintPipeline else []), class_labels=[9], num_inference_steps=2)
    DDPMHFInpaintPipeline.from_pipe(base, unet=plain_copy(unet), torch_dtype=None).save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["null_class_id"] == NULL and index["id2label"] == {str(k): v for k, v in ID2LABEL.items()}
    again = DDPMHFImg2ImgPipeline.from_pretrained(tmp_path / "saved")
    assert again.config.null_class_id == NULL and again.get_label_ids("uno") == [1]


def test_super_resolution_takes_class_labels_and_counts_unet_calls():
    """The super-resolution pipeline on a conditional model (it failed inside the UNet without labels): the labels and
    the guided null branch reach every UNet call, one image is repeated per class, and unet_calls is the chain."""
    unet = tiny_unet()
    pipe = DDPMHFSuperResolutionPipeline.from_pipe(conditional_pipe(unet), unet=unet, torch_dtype=None)
    pipe.set_progress_bar_config(disable=True)
    unet.calls.clear()
    out = pipe(torch.rand(1, 1, 4, 4), class_labels=["two", 3], guidance_scale=2.0, num_inference_steps=STEPS,
               output_type="pt")
    assert out.images.shape == (2, 1, 8, 8) and out.unet_calls == STEPS == len(unet.calls)
    assert all(c[2] == [2, 3, NULL, NULL] for c in unet.calls)
    unet.calls.clear()
    pipe(torch.rand(1, 1, 4, 4), class_labels=[1], guidance_scale=1.0, num_inference_steps=2, output_type="pt")
    assert all(c[2] == [1] for c in unet.calls)  # s = 1: the conditional model alone, one branch


def test_default_guidance_is_the_models_own_and_saved_with_it(tmp_path):
    """A pipeline given guidance_scale at construction (the default measured for the model) uses it when a call
    gives none, and model_index.json keeps it; without one the package default applies."""
    unet = tiny_unet(cls=UNet2DModel)
    torch.manual_seed(0)
    pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler(variance_type="learned_range"), id2label=ID2LABEL,
                          null_class_id=NULL, guidance_scale=3.0)
    pipe.set_progress_bar_config(disable=True)

    def images(p, **kw):
        return p(class_labels=[2], generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                 output_type="np", **kw).images

    assert np.array_equal(images(pipe), images(pipe, guidance_scale=3.0))
    assert not np.array_equal(images(pipe), images(pipe, guidance_scale=DEFAULT_GUIDANCE_SCALE))
    pipe.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["guidance_scale"] == 3.0
    again = DDPMHFPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert again.config.guidance_scale == 3.0 and np.array_equal(images(again), images(pipe))
    plain = conditional_pipe(unet)
    assert np.array_equal(images(plain), images(plain, guidance_scale=DEFAULT_GUIDANCE_SCALE))
    with pytest.raises(ValueError, match="needs its null_class_id"):
        DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler(), guidance_scale=2.0)


def test_a_zero_dim_tensor_label_and_a_model_without_a_null_class():
    pipe = conditional_pipe()
    one = pipe(class_labels=torch.tensor(3), generator=torch.Generator().manual_seed(0), num_inference_steps=2,
               output_type="np").images
    same = pipe(class_labels=[3], generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                output_type="np").images
    assert one.shape[0] == 1 and np.array_equal(one, same)
    # a conditional UNet whose pipeline names no null class: no guidance by default (it crashed with AttributeError),
    # and a clear error when guidance is asked for
    bare = DDPMHFPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    bare.set_progress_bar_config(disable=True)
    pipe.unet.calls.clear()
    out = bare(class_labels=[1, 4], num_inference_steps=2, output_type="np").images
    assert out.shape[0] == 2 and all(c[2] == [1, 4] for c in pipe.unet.calls)
    with pytest.raises(ValueError, match="no null_class_id"):
        bare(class_labels=[1], guidance_scale=2.0, num_inference_steps=2)


def test_class_names_made_of_digits_are_names():
    """An image folder with sub-folders "10", "11", "12", "13" names its classes 0..3 by those strings: the grid rows
    of `ddpm-hf sample --class_labels 12` are class "12" (id 2), not id 12; a digit string that names no class is an
    id, and a name is a name."""
    from ddpm_hf.sampling import class_rows

    unet = tiny_unet()
    pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler(), id2label={0: "10", 1: "11", 2: "12", 3: "13"},
                          null_class_id=NULL)
    labels, titles = class_rows(pipe, ["12", "3", 1], per_class=2)
    assert labels == [2, 2, 3, 3, 1, 1] and titles == ["2: 12", "3: 13", "1: 11"]
    labels, _ = class_rows(conditional_pipe(unet), ["two", "1"], per_class=1)
    assert labels == [2, 1]


# ------------------------------------------------------------------------------------------------ saved models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A conditional learned-variance pipeline, saved, and its images for labels by name with our scheduler and
    DPM-Solver++."""
    pipe = conditional_pipe(tiny_unet(cls=UNet2DModel))
    folder = tmp_path_factory.mktemp("saved") / "tiny-conditional"
    pipe.save_pretrained(folder)
    want = {"ours": pipe(class_labels=["three", "uno"], guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                         num_inference_steps=STEPS, output_type="np").images}
    dpm = conditional_pipe(pipe.unet, DPMSolverMultistepScheduler.from_config(pipe.scheduler.config))
    want["dpm"] = dpm(class_labels=[3, 1], guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                      num_inference_steps=STEPS, output_type="np").images
    return folder, want


@pytest.mark.slow
def test_conditional_sampling_through_trust_remote_code_without_ddpm_hf(saved, tmp_path):
    folder, want = saved
    out = run_python(
        """
        from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

        pipe = DiffusionPipeline.from_pretrained(ARGS["folder"], trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        kwargs = dict(guidance_scale=2.0, num_inference_steps=ARGS["n"], output_type="np")
        ours = pipe(class_labels=pipe.get_label_ids(["three", "uno"]), generator=torch.Generator().manual_seed(0),
                    **kwargs).images
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        dpm = pipe(class_labels=[3, 1], generator=torch.Generator().manual_seed(0), **kwargs).images
        img2img = DiffusionPipeline.from_pretrained(ARGS["folder"], custom_pipeline="pipeline_ddpm_hf_img2img",
                                                    trust_remote_code=True)
        img2img.set_progress_bar_config(disable=True)
        edited = img2img(torch.zeros(1, 1, 8, 8) + 0.5, strength=0.5, class_labels=["two", "zero"], **kwargs).images
        try:
            pipe(class_labels=[7], num_inference_steps=2)
            error = None
        except ValueError as e:
            error = str(e)
        np.savez(ARGS["out"], ours=ours, dpm=dpm)
        result({"module": type(pipe).__module__, "error": error, "edited": list(edited.shape),
                "null": pipe.config.null_class_id, "labels": pipe.labels})
        """,
        {"folder": str(folder), "n": STEPS, "out": str(tmp_path / "remote.npz")},
        env=local_env(tmp_path), block_ddpm_hf=True,
    )
    assert out["module"].startswith("diffusers_modules.")
    assert out["null"] == NULL and out["labels"]["uno"] == 1 and out["edited"] == [2, 8, 8, 1]
    assert "out of range" in out["error"]
    remote = np.load(tmp_path / "remote.npz")
    np.testing.assert_allclose(remote["ours"], want["ours"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(remote["dpm"], want["dpm"], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_cli_sample_one_labelled_row_per_class(saved, tmp_path, capsys):
    """The command as a process of its own once (what a user runs), then its other cases in this process."""
    folder, _ = saved

    def cli(*args):
        return forked_cli("sample", *args)

    out = tmp_path / "out"
    r = cli(folder, "--class_labels", "3", "uno", "--guidance_scale", "3", "--num_images", "4", "--num_inference_steps",
            STEPS, "--seed", "10", "--batch_size", "3", "--output_dir", out)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["grid.png"] + [f"sample_{i:04d}.png" for i in range(8)]
    # images 0-3 are class 3's, 4-7 class 1's; image i is drawn with the generator seeded seed + i
    pipe = DDPMHFPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    for i, label in enumerate([3] * 4 + [1] * 4):
        want = pipe(class_labels=[label], guidance_scale=3.0, generator=[torch.Generator().manual_seed(10 + i)],
                    num_inference_steps=STEPS, output_type="np").images[0, ..., 0]
        got = np.asarray(Image.open(out / f"sample_{i:04d}.png"), dtype=int)
        assert np.abs(got - np.round(want * 255)).max() <= 1
    # one row of 4 per class (a square grid of 8 would be 3 x 3), a margin for the row labels on the left
    grid = Image.open(out / "grid.png")
    tile = 64 + 2
    assert grid.width > 4 * tile + 2 + 8 and 2 * tile + 2 <= grid.height < 3 * tile
    # every class by default: NUM_CLASSES rows
    code, out, err = cli_in_process(capsys, "sample", folder, "--num_images", "1", "--num_inference_steps", 2,
                                    "--output_dir", tmp_path / "all")
    assert code == 0 and f"wrote {NUM_CLASSES} images" in out, err
    for args, message in [(("--class_labels", "9"), "out of range"), (("--class_labels", "seven"), "not known")]:
        code, _, err = cli_in_process(capsys, "sample", folder, *args, "--num_inference_steps", 2, "--output_dir",
                                      tmp_path / "bad")
        assert code == 2 and message in err, err


def test_cli_img2img_with_a_class_label_a_guidance_scale_and_a_scheduler(saved, tmp_path, capsys):
    from ddpm_hf.cli import main as cli_main

    folder, _ = saved
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "grey.png")
    cli_main(["img2img", str(folder), "--image", str(tmp_path / "grey.png"), "--class_label", "uno",
              "--guidance_scale", "2", "--scheduler", "dpmsolver++", "--strength", "0.6", "--num_inference_steps",
              str(STEPS), "--seed", "4", "--output_dir", str(tmp_path / "out")])
    pipe = DDPMHFImg2ImgPipeline.from_pretrained(folder)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(Image.open(tmp_path / "grey.png"), strength=0.6, class_labels=[1], guidance_scale=2.0,
                num_inference_steps=STEPS, generator=torch.Generator().manual_seed(4), output_type="np").images
    got = np.asarray(Image.open(tmp_path / "out" / "grey_img2img.png"), dtype=int)
    assert np.abs(got - np.round(want[0, ..., 0] * 255)).max() <= 1
    with pytest.raises(SystemExit):
        cli_main(["img2img", str(folder), "--image", str(tmp_path / "grey.png"), "--class_label", "9",
                  "--num_inference_steps", "2", "--output_dir", str(tmp_path / "bad")])
    assert "class ids [9] out of range" in capsys.readouterr().err


def test_cli_upscale_takes_a_class_name_made_of_digits_and_a_guidance_scale(tmp_path, capsys):
    """`ddpm-hf upscale --class_labels 12` on a model whose classes are named "10".."13" restores towards class "12"
    (id 2), not id 12, with the guidance scale given: the pipeline's own result for class id 2 at that scale."""
    from ddpm_hf.cli import main as cli_main

    folder = tmp_path / "named"
    DDPMHFPipeline(unet=tiny_unet(cls=UNet2DModel), scheduler=DDPMHFScheduler(),
                   id2label={0: "10", 1: "11", 2: "12", 3: "13"}, null_class_id=NULL).save_pretrained(folder)
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).save(tmp_path / "low.png")
    cli_main(["upscale", str(folder), "--image", str(tmp_path / "low.png"), "--class_labels", "12",
              "--guidance_scale", "2", "--num_inference_steps", str(STEPS), "--seed", "3", "--output_dir",
              str(tmp_path / "out")])
    pipe = DDPMHFSuperResolutionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(Image.open(tmp_path / "low.png"), class_labels=[2], guidance_scale=2.0, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(3), output_type="np").images
    got = np.asarray(Image.open(tmp_path / "out" / "low_upscale.png"), dtype=int)
    assert np.abs(got - np.round(want[0, ..., 0] * 255)).max() <= 1
    other = pipe(Image.open(tmp_path / "low.png"), class_labels=[3], guidance_scale=2.0, num_inference_steps=STEPS,
                 generator=torch.Generator().manual_seed(3), output_type="np").images
    assert np.abs(got - np.round(other[0, ..., 0] * 255)).max() > 1  # the label matters here

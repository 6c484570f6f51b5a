"""The ddpm-hf command as a user runs it: real processes, real files."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler, build_unet

from helpers import forked_cli


def _run(*args, cwd):
    return forked_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    pipe = DDPMHFPipeline(unet=build_unet("cpu-8").eval(), scheduler=DDPMHFScheduler())
    folder = tmp_path_factory.mktemp("model") / "digits-ddpm"
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.mark.slow
def test_sample_writes_pngs_grid_and_strip(saved, tmp_path):
    pipe, folder = saved
    out = tmp_path / "samples"
    r = _run("sample", str(folder), "--num_images", "3", "--batch_size", "2", "--num_inference_steps", "5",
             "--seed", "7", "--output_dir", str(out), "--strip", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = sorted(os.listdir(out))
    assert files == ["grid.png", "sample_0000.png", "sample_0001.png", "sample_0002.png", "strip.png"]
    # image i is the pipeline's image for the generator seeded 7 + i, whatever the batch size
    pipe.set_progress_bar_config(disable=True)
    for i in range(3):
        want = pipe(generator=[torch.Generator().manual_seed(7 + i)], num_inference_steps=5, output_type="pil")
        got = Image.open(out / f"sample_{i:04d}.png")
        assert got.mode == "L" and got.size == (8, 8)
        assert np.abs(np.asarray(got, dtype=int) - np.asarray(want.images[0], dtype=int)).max() <= 1
    grid, strip = Image.open(out / "grid.png"), Image.open(out / "strip.png")
    assert grid.width >= 2 * 64 and strip.width >= 5 * 64  # upscaled so an 8x8 digit is visible; 5 steps shown
    assert "wrote 3 images" in r.stdout


# ------------------------------------------------------------------------------------------------ flag names
@pytest.mark.parametrize("command, canonical, alias", [
    (["evaluate", "m"], ["--num_inference_steps", "5,2"], ["--ddpm_num_inference_steps", "5,2"]),
    (["evaluate", "m"], ["--bpd_timesteps", "4"], ["--eval_bpd_timesteps", "4"]),
    (["evaluate", "m"], ["--batch_size", "3"], ["--eval_batch_size", "3"]),
    (["sample", "m"], ["--num_inference_steps", "5"], ["--ddpm_num_inference_steps", "5"]),
    (["sample", "m"], ["--batch_size", "3"], ["--eval_batch_size", "3"]),
    (["denoise", "m", "--image", "x.png"], ["--noise_level", "0.1"], ["--sigma", "0.1"]),
    (["inpaint", "m", "--image", "x.png"], ["--mask_image", "m.png"], ["--mask", "m.png"]),
    (["img2img", "m", "--image", "x.png"], ["--class_labels", "3"], ["--class_label", "3"]),
    (["evaluate", "m"], ["--split", "validation"], ["--eval_split", "validation"]),
])
def test_the_other_spelling_of_a_flag_is_an_alias(command, canonical, alias):
    """One meaning, one name (diffusers'), the other command's spelling accepted: both give the same arguments,
    different from the default."""
    from ddpm_hf.cli import build_parser

    parser, _ = build_parser()
    got, want = (vars(parser.parse_args(command + extra)) for extra in (alias, canonical))
    other = vars(parser.parse_args(command + [canonical[0], "7"]))  # another value: the alias is not ignored
    assert got == want != other


def test_denoise_sigma_alias_runs_the_same_chain(saved, tmp_path, monkeypatch):
    """`denoise --sigma` (the old name) and `--noise_level` (the pipeline's) write the same image. In process (the
    command's own entry point; test_sample_writes_pngs_grid_and_strip runs the CLI as a real process)."""
    from ddpm_hf.cli import main

    _, folder = saved
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "grey.png")
    for flag in ("--noise_level", "--sigma"):
        main(["denoise", str(folder), "--image", "grey.png", flag, "0.2", "--num_inference_steps", "3",
              "--output_dir", flag.strip("-")])
    assert (tmp_path / "noise_level" / "grey_denoise.png").read_bytes() == \
        (tmp_path / "sigma" / "grey_denoise.png").read_bytes()


def test_img2img_strength_default_is_the_pipelines():
    """The CLI's --strength default is DDPMHFImg2ImgPipeline's (diffusers' 0.8), and --help says so."""
    import inspect

    from ddpm_hf.cli import build_parser
    from ddpm_hf.pipeline_ddpm_hf_img2img import DDPMHFImg2ImgPipeline

    want = inspect.signature(DDPMHFImg2ImgPipeline.__call__).parameters["strength"].default
    _, commands = build_parser()
    parser = commands["img2img"][0]
    assert parser.parse_args(["m", "--image", "x.png"]).strength == want == 0.8
    assert f"default {want}" in " ".join(parser.format_help().split())


# ------------------------------------------------------------------------------------------------ import cost
@pytest.mark.slow  # a fresh interpreter
def test_import_and_the_parser_tree_do_not_import_torch_or_diffusers():
    """`import ddpm_hf`, its evaluation package and errors, what `ddpm-hf push` imports (hub, model_card and the
    upload, pipeline_ddpm_hf_hub: a push runs without torch; test_hub_faults checks a real one) and every command's
    --help (the whole parser tree, and `train`'s own parser) run without importing torch, diffusers or a pipeline; the
    lazy names still
    resolve."""
    code = (
        "import sys, contextlib, io\n"
        "import ddpm_hf, ddpm_hf.evaluation, ddpm_hf.errors, ddpm_hf.run_dir, ddpm_hf.hub, ddpm_hf.model_card\n"
        "from ddpm_hf.cli import build_parser, main\n"
        "_, commands = build_parser()\n"
        "for argv in [['--help'], ['train', '--help']] + [[name, '--help'] for name in commands]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'numpy', 'PIL',\n"
        "               'huggingface_hub') or (m.startswith('ddpm_hf.pipeline') and m != 'ddpm_hf.pipeline_ddpm_hf_hub'))\n"
        "print('HEAVY', heavy)\n"
        "assert ddpm_hf.DDPMHFPipeline.__name__ == 'DDPMHFPipeline' and 'diffusers' in sys.modules\n"
        "assert ddpm_hf.evaluation.held_out_bits.__module__ == 'ddpm_hf.evaluation.bound'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "HEAVY []" in r.stdout, r.stdout


def test_scheduler_names_are_the_schedulers_own():
    """The parsers' choices come from scheduling_ddpm_hf.py's source (read without importing torch): the same tuples
    the scheduler checks against."""
    from ddpm_hf import scheduler_names, scheduling_ddpm_hf

    from ddpm_hf import pipeline_ddpm_hf_inpaint, pipeline_ddpm_hf_super_resolution

    for name in ("BETA_SCHEDULES", "VARIANCE_TYPES", "PREDICTION_TYPES", "TIMESTEP_SPACINGS"):
        assert getattr(scheduler_names, name) == getattr(scheduling_ddpm_hf, name)
    assert scheduler_names.INPAINT_METHODS == pipeline_ddpm_hf_inpaint.METHODS == ("repaint", "ddnm")
    assert scheduler_names.SUPER_RESOLUTION_METHODS == pipeline_ddpm_hf_super_resolution.METHODS == ("ddnm", "ilvr")
    with pytest.raises(AttributeError):
        scheduler_names.NOT_A_NAME

"""The ddpm-hf command as a user runs it: real processes, real files."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler, build_unet


def _run(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "ddpm_hf.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    pipe = DDPMHFPipeline(unet=build_unet("cpu-8").eval(), scheduler=DDPMHFScheduler())
    folder = tmp_path_factory.mktemp("model") / "digits-ddpm"
    pipe.save_pretrained(folder)
    return pipe, folder


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


def test_bad_arguments_fail_with_a_message(saved, tmp_path):
    _, folder = saved
    r = _run("sample", str(folder), "--num_images", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--num_images must be >= 1" in r.stderr
    r = _run("sample", str(tmp_path / "missing"), "--num_images", "1", cwd=tmp_path)
    assert r.returncode != 0 and "missing" in r.stderr
    r = _run("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr

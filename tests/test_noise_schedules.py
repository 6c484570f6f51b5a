"""The shifted cosine schedule (ddpm_hf.noise_schedules; Hoogeboom et al. 2023, sec. 3.1) against its definition,
and a training run with it as diffusers loads it."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from helpers import run_train
from ddpm_hf.errors import ConfigError
from ddpm_hf.noise_schedules import resolution_shift, shifted_cosine_betas
from ddpm_hf.scheduling_ddpm_hf import make_betas


def logit_alphabar(betas):
    alphabar = torch.cumprod(1 - betas.double(), 0)
    return torch.log(alphabar) - torch.log1p(-alphabar)


def test_shift_zero_is_the_cosine_schedule():
    assert torch.equal(shifted_cosine_betas(1000, 0.0), make_betas("squaredcos_cap_v2", 1000, None, None))


@pytest.mark.parametrize("shift", [-1.39, 2.0, resolution_shift(8)])
def test_log_snr_moves_by_the_shift_at_every_uncapped_step(shift):
    """logSNR_shifted(t) = logSNR_cosine(t) + shift, with logSNR = log(alphabar / (1 - alphabar)) of the discrete
    alphabar_t = prod(1 - beta_s) (the float32 betas hold it to about 1e-4); the last step, capped at beta 0.999 by
    both, leaves almost no signal (alphabar_T < 1e-6)."""
    T = 1000
    shifted, cosine = shifted_cosine_betas(T, shift), make_betas("squaredcos_cap_v2", T, None, None)
    difference = (logit_alphabar(shifted) - logit_alphabar(cosine))[: T - 1]
    np.testing.assert_allclose(difference.numpy(), shift, atol=2e-4)
    assert torch.cumprod(1 - shifted.double(), 0)[-1] < 1e-6
    assert bool(((shifted > 0) & (shifted <= 0.999)).all())


def test_resolution_rule():
    """Hoogeboom et al.: 2 log(64 / d); 0 at 64, negative above (more noise), positive below."""
    assert resolution_shift(64) == 0.0
    assert resolution_shift(8) == pytest.approx(2 * math.log(8))
    assert resolution_shift(256) == pytest.approx(-2 * math.log(4))


def test_shift_needs_the_cosine_schedule():
    from ddpm_hf.training.config import TrainConfig

    with pytest.raises(ConfigError, match="squaredcos_cap_v2, got linear"):
        TrainConfig.create(cosine_logsnr_shift=2.0, ddpm_beta_schedule="linear")
    assert TrainConfig.create(cosine_logsnr_shift=2.0).cosine_logsnr_shift == 2.0


@pytest.mark.slow
def test_a_run_with_the_shift_loads_in_diffusers(tmp_path):
    """A tiny run with --cosine_logsnr_shift: its saved scheduler carries the shifted betas as trained_betas, which
    diffusers' DDPMScheduler loads to the same alphabar; training_args.json records the shift and the card says it."""
    out = tmp_path / "run"
    run_train("--cosine_logsnr_shift", "2", "--max_train_steps", "2", "--eval_split", "", "--output_dir", str(out),
              cwd=tmp_path)
    expected = shifted_cosine_betas(20, 2.0)
    theirs = DDPMScheduler.from_pretrained(out / "scheduler")
    np.testing.assert_array_equal(theirs.betas.numpy(), expected.numpy())
    assert json.loads((out / "training_args.json").read_text())["cosine_logsnr_shift"] == 2.0
    assert "cosine (Nichol & Dhariwal eq. 17) with its log-SNR shifted by 2 (Hoogeboom et al. 2023)" in (
        out / "README.md").read_text()

"""Training losses: targets per prediction type, min-SNR weights, and the L_hybrid estimate."""

import math

import pytest
import torch

from ddpm_hf import DDPMHFScheduler
from ddpm_hf.likelihood import vlb_terms
from ddpm_hf.losses import diffusion_loss, min_snr_weights, training_target


def test_targets_and_min_snr_weight_the_implied_x0_error_alike():
    """An error e in the target's space implies an x0 error of -e sqrt(1 - alphabar)/sqrt(alphabar) (epsilon),
    -e sqrt(1 - alphabar) (v) or e (sample); the min-SNR weights turn each target's squared error into
    min(SNR, gamma) times the implied x0 squared error."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 4, 4, generator=g)
    t = torch.tensor([1, 100, 500, 999])
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        s = DDPMHFScheduler(prediction_type=prediction_type)
        target = training_target(s, x0, noise, t)
        want = {"epsilon": noise, "sample": x0,
                "v_prediction": s.alphas_cumprod[t].view(-1, 1, 1, 1).sqrt() * noise
                - (1 - s.alphas_cumprod[t].view(-1, 1, 1, 1)).sqrt() * x0}[prediction_type]
        torch.testing.assert_close(target, want)
        delta = 0.01 * torch.randn(target.shape, generator=g)
        ab = s.alphas_cumprod[t].view(-1, 1, 1, 1).double()
        snr = ab / (1 - ab)
        if prediction_type == "epsilon":
            x0_err = -(1 - ab).sqrt() / ab.sqrt() * delta
        elif prediction_type == "v_prediction":
            x0_err = -(1 - ab).sqrt() * delta
        else:
            x0_err = delta.double()
        weights = min_snr_weights(s, t, 5.0).double().view(-1, 1, 1, 1)
        lhs = weights * delta.double().square()
        rhs = torch.minimum(snr, torch.full_like(snr, 5.0)) * x0_err.square()
        torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-12)


def test_hybrid_loss_adds_the_scaled_vlb_estimate():
    s = DDPMHFScheduler(variance_type="learned_range", num_train_timesteps=100)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 40, 99])
    xt = s.add_noise(x0, noise, t)
    out = torch.cat([noise + 0.1, torch.zeros_like(noise)], dim=1)
    loss, mse, vlb = diffusion_loss(s, out, x0, xt, noise, t, vlb_weight=0.001)
    torch.testing.assert_close(mse, torch.full((3,), 0.01), rtol=1e-4, atol=1e-7)
    terms = vlb_terms(s, out, x0, xt, t, clip_denoised=False)
    torch.testing.assert_close(vlb, terms * 100 / (16 * math.log(2)))
    torch.testing.assert_close(loss, mse.mean() + 0.001 * vlb.mean())
    # fixed variances: plain L_simple
    fixed = DDPMHFScheduler(num_train_timesteps=100)
    loss, mse, vlb = diffusion_loss(fixed, noise + 0.1, x0, xt, noise, t)
    assert vlb is None and abs(loss.item() - 0.01) < 1e-6


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_sample_prediction_loss_is_l_simple_of_the_implied_eps(beta_schedule, snr_gamma):
    """An x_0 prediction x0_hat implies eps_hat = (x_t - sqrt(alphabar_t) x0_hat) / sqrt(1 - alphabar_t) (Ho eq. 4);
    the "sample" loss of x0_hat equals the "epsilon" loss of eps_hat (Ho eq. 14; train_unconditional.py's SNR
    weighting), and still does with min-SNR weights (both min(SNR, gamma) times the x_0 error)."""
    T = 1000
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(16, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, T, (16,), generator=g)
    t[:2] = torch.tensor([0, T - 1])  # both ends of the schedule too
    x0_hat = x0 + 0.3 * torch.randn(x0.shape, generator=g)
    by_type = {p: DDPMHFScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, prediction_type=p)
               for p in ("sample", "epsilon")}
    xt = by_type["sample"].add_noise(x0, noise, t)
    ab = by_type["sample"].alphas_cumprod[t].double().view(-1, 1, 1, 1)
    eps_hat = ((xt.double() - ab.sqrt() * x0_hat.double()) / (1 - ab).sqrt()).float()

    loss_x0, mse_x0, _ = diffusion_loss(by_type["sample"], x0_hat, x0, xt, noise, t, snr_gamma=snr_gamma)
    loss_eps, mse_eps, _ = diffusion_loss(by_type["epsilon"], eps_hat, x0, xt, noise, t, snr_gamma=snr_gamma)
    torch.testing.assert_close(loss_x0, loss_eps, rtol=1e-4, atol=0)
    # the per-image parts are the unweighted errors in each target's space: (x0_hat - x0)^2 and (eps_hat - eps)^2
    torch.testing.assert_close(mse_x0, (x0_hat - x0).square().flatten(1).mean(1))
    torch.testing.assert_close(mse_eps, (eps_hat - noise).square().flatten(1).mean(1))
    snr = (ab / (1 - ab)).flatten().float()
    torch.testing.assert_close(mse_eps, snr * mse_x0, rtol=1e-4, atol=1e-6)
    # with weights that differ between the images the plain x0-MSE would not agree
    assert snr.max() / snr.min() > 1e3
    if snr_gamma is None:
        assert not torch.allclose(mse_x0.mean(), loss_eps, rtol=1e-2)

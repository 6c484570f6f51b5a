"""Each equation on its own: the schedule, q(x_t|x_0) by Monte Carlo, the posterior (Ho eq. 7) derived
independently by Bayes' rule, and the ancestral step against Ho Algorithm 2."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_hf import DDPMHFScheduler
from ddpm_hf.scheduling_ddpm_hf import posterior_coefficients, x0_coefficients


def test_linear_schedule_is_ho_section_4():
    s = DDPMHFScheduler()
    assert s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    steps = s.betas[1:] - s.betas[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, (0.02 - 1e-4) / 999), atol=1e-8, rtol=0)
    # alphabar_t = prod alpha_s (Ho sec. 2), computed here in float64 from the betas
    alphabar = torch.cumprod(1 - s.betas.double(), 0)
    torch.testing.assert_close(s.alphas_cumprod.double(), alphabar, atol=1e-6, rtol=1e-4)


def test_cosine_schedule_is_nichol_dhariwal_eq_17():
    T, s0 = 1000, 0.008
    f = [math.cos((t / T + s0) / (1 + s0) * math.pi / 2) ** 2 for t in range(T + 1)]
    alphabar = torch.tensor([f[t] / f[0] for t in range(1, T + 1)], dtype=torch.float64)
    betas = torch.tensor([min(1 - f[t] / f[t - 1], 0.999) for t in range(1, T + 1)], dtype=torch.float64)
    sched = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(sched.betas.double(), betas, atol=1e-7, rtol=1e-5)
    # away from the 0.999 cap, alphabar_t = f(t)/f(0)
    torch.testing.assert_close(sched.alphas_cumprod.double()[:900], alphabar[:900], atol=1e-6, rtol=1e-4)


def test_zero_terminal_snr_rescale():
    s = DDPMHFScheduler(rescale_betas_zero_snr=True)
    plain = DDPMHFScheduler()
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert s.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-5)


@pytest.mark.parametrize("t", [0, 9, 250, 999])
def test_q_xt_given_x0_moments_by_monte_carlo(t):
    """add_noise samples q(x_t|x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I) (Ho eq. 4)."""
    s = DDPMHFScheduler()
    g = torch.Generator().manual_seed(t)
    x0 = torch.linspace(-1, 1, 6, dtype=torch.float64).view(1, 6)
    n = 200_000
    noise = torch.randn(n, 6, generator=g, dtype=torch.float64)
    xt = s.add_noise(x0.expand(n, 6), noise, torch.full((n,), t))
    ab = s.alphas_cumprod[t].double()
    se = math.sqrt((1 - ab.item()) / n)
    torch.testing.assert_close(xt.mean(0), ab.sqrt() * x0[0], atol=5 * se, rtol=0)
    torch.testing.assert_close(xt.var(0), (1 - ab).expand(6), atol=5 * (1 - ab.item()) * math.sqrt(2 / n), rtol=0)


def test_closed_form_equals_iterated_forward_steps():
    """t applications of q(x_t|x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I) (Ho eq. 2) have the moments of
    the closed form q(x_t|x_0) (Ho eq. 4)."""
    s = DDPMHFScheduler(num_train_timesteps=100, beta_end=0.05)
    g = torch.Generator().manual_seed(0)
    n, t_end = 100_000, 60
    x = torch.full((n,), 0.7, dtype=torch.float64)
    for t in range(t_end + 1):
        beta = s.betas[t].double()
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    ab = s.alphas_cumprod[t_end].double()
    assert x.mean().item() == pytest.approx((ab.sqrt() * 0.7).item(), abs=5 * math.sqrt(1 / n))
    assert x.var().item() == pytest.approx((1 - ab).item(), abs=5 * math.sqrt(2 / n))


def _bayes_posterior(s, x0, xt, t, prev=None):
    """q(x_{t-1}|x_t, x_0) by Bayes' rule on two Gaussians, written independently of Ho eq. 7's coefficients:
    prior x_{t-1} ~ N(sqrt(alphabar_{t-1}) x0, 1 - alphabar_{t-1}), likelihood x_t ~ N(sqrt(alpha_t) x_{t-1}, beta_t).
    With ``prev``, the same for x_prev, alpha' = alphabar_t / alphabar_prev (Nichol & Dhariwal sec. 4)."""
    prev = t - 1 if prev is None else prev
    ab_prev = s.alphas_cumprod[prev].double() if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    alpha = s.alphas_cumprod[t].double() / ab_prev
    beta = 1 - alpha
    prior_var = 1 - ab_prev
    if prior_var == 0:  # t = 0: x_{t-1} = x_0 exactly
        return x0, torch.tensor(0.0, dtype=torch.float64)
    precision = 1 / prior_var + alpha / beta
    var = 1 / precision
    mean = var * (ab_prev.sqrt() * x0 / prior_var + alpha.sqrt() * xt / beta)
    return mean, var


@pytest.mark.parametrize("t", [0, 1, 2, 50, 500, 999])
def test_posterior_is_bayes_rule(t):
    s = DDPMHFScheduler()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    xt = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    mean, var, _ = s.posterior_mean_variance(x0, xt, torch.full((4,), t))
    want_mean, want_var = _bayes_posterior(s, x0, xt, t)
    torch.testing.assert_close(mean, want_mean, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(var.flatten(), want_var.expand(4), atol=1e-12, rtol=1e-7)

    # the scheduler's step with prediction_type="sample" and x0 as the output draws from the same posterior
    sched = DDPMHFScheduler(prediction_type="sample", clip_sample=False, variance_type="fixed_small")
    n = 40_000
    gen = torch.Generator().manual_seed(2)
    out = sched.step(x0[:1].expand(n, 1, 3, 3), t, xt[:1].expand(n, 1, 3, 3), generator=gen).prev_sample
    se = max(math.sqrt(want_var.item() / n), 1e-9)
    torch.testing.assert_close(out.mean(0), want_mean[0], atol=5 * se + 1e-6, rtol=0)
    if t > 0:
        assert out.var(0).mean().item() == pytest.approx(want_var.item(), rel=0.03)


@pytest.mark.parametrize("t,prev", [(999, 600), (600, 321), (321, 0), (5, 4), (99, -1), (0, -1)])
def test_posterior_coefficients_are_bayes_rule_for_skipped_steps(t, prev):
    """``posterior_coefficients`` in float64, the formulas both the scheduler and the likelihood use: beta'_t is the
    variance of the skipped forward step (alpha'_t is the product of the alphas skipped) and the mean coefficients
    and betatilde'_t are q(x_prev | x_t, x_0) by Bayes' rule (Ho eq. 7, Nichol & Dhariwal sec. 4)."""
    s = DDPMHFScheduler()
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    xt = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    ab_t = s.alphas_cumprod[t].double()
    ab_s = s.alphas_cumprod[prev].double() if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    beta, var, from_x0, from_xt = posterior_coefficients(ab_t, ab_s)
    assert beta.dtype == var.dtype == from_x0.dtype == from_xt.dtype == torch.float64
    torch.testing.assert_close(1 - beta, torch.prod(1 - s.betas[prev + 1 : t + 1].double()), atol=0, rtol=1e-5)
    want_mean, want_var = _bayes_posterior(s, x0, xt, t, prev)
    torch.testing.assert_close(from_x0 * x0 + from_xt * xt, want_mean, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(var, want_var, atol=1e-12, rtol=1e-7)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_x0_coefficients_invert_the_forward_process(prediction_type):
    """(a x_t - b output) / c with ``x0_coefficients`` recovers x_0 from x_t = sqrt(alphabar_t) x_0 +
    sqrt(1 - alphabar_t) eps (Ho eq. 4) and the output a perfect model gives: eps, x_0 or v, as diffusers'
    DDPMScheduler computes x_t and v."""
    theirs = DDPMScheduler()
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(4, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 17, 500, 999])
    xt = theirs.add_noise(x0, eps, t)
    output = {"epsilon": eps, "sample": x0, "v_prediction": theirs.get_velocity(x0, eps, t)}[prediction_type]
    coefficients = x0_coefficients(theirs.alphas_cumprod[t].double().view(-1, 1, 1, 1), prediction_type)
    if prediction_type == "sample":
        assert coefficients is None
        return
    a, b, c = coefficients
    assert a.dtype == b.dtype == c.dtype == torch.float64
    torch.testing.assert_close((a * xt - b * output) / c, x0, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="prediction_type"):
        x0_coefficients(theirs.alphas_cumprod, "noise")


@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_small"])
def test_ancestral_step_is_algorithm_2(variance_type):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alphabar_t) eps) / sqrt(alpha_t) + sigma_t z, z = 0 at t = 1
    (Ho Algorithm 2 line 4), over the whole 1000-step chain with the scheduler's own noise draws."""
    s = DDPMHFScheduler(variance_type=variance_type, clip_sample=False)
    s.set_timesteps(1000)
    g_model = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=g_model)
    target = torch.rand(x.shape, dtype=torch.float64, generator=g_model) * 2 - 1
    for t in s.timesteps.tolist():
        ab = s.alphas_cumprod[t].double()
        # the noise a model pointing at `target` would predict, plus an error, so the chain stays bounded
        eps = (x - ab.sqrt() * target) / (1 - ab).sqrt() + 0.1 * torch.randn(x.shape, dtype=torch.float64, generator=g_model)
        ab_prev = s.alphas_cumprod[t - 1].double() if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        # beta_t as the scheduler holds it: 1 - alphabar_t / alphabar_{t-1} of its float32 alphabar table (equal to
        # the float32 betas up to the rounding of that ratio, ~5e-4 relative at t = 1)
        beta = (1 - s.alphas_cumprod[t] / (s.alphas_cumprod[t - 1] if t > 0 else s.one)).double()
        torch.testing.assert_close(beta, s.betas[t].double(), rtol=1e-3, atol=0)
        sigma2 = beta if variance_type == "fixed_large" else (1 - ab_prev) / (1 - ab) * beta
        state = torch.Generator().manual_seed(t)
        z = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(t)) if t > 0 else 0
        want = (x - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt() + sigma2.sqrt() * z
        got = s.step(eps, t, x, generator=state).prev_sample
        # The scheduler evaluates its coefficients in float32 from the float32 alphabar table, as diffusers does;
        # at small t, 1 - alphabar_t ~ 1e-4 carries ~5e-4 relative rounding, which bounds the agreement with this
        # float64 evaluation (a wrong coefficient would be off by 1e-2 or more).
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
        x = want


def test_skipped_steps_use_recomputed_betas():
    """With a subsequence, beta'_k = 1 - alphabar_{t_k}/alphabar_{t_{k-1}} (Nichol & Dhariwal sec. 4): the step is
    Algorithm 2 with beta' in place of beta."""
    s = DDPMHFScheduler(variance_type="fixed_large", clip_sample=False)
    s.set_timesteps(timesteps=[900, 600, 321, 0])
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    eps = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    for t, prev in [(900, 600), (600, 321), (321, 0)]:
        ab, ab_prev = s.alphas_cumprod[t].double(), s.alphas_cumprod[prev].double()
        beta = 1 - ab / ab_prev
        z = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
        want = (x - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt() + beta.sqrt() * z
        got = s.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_v_prediction_target_and_inverse():
    """v = sqrt(alphabar) eps - sqrt(1 - alphabar) x0, and the step recovers x0 from v exactly."""
    s = DDPMHFScheduler(prediction_type="v_prediction", clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([5, 400, 990])
    ab = s.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    v = s.get_velocity(x0, eps, t)
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0, atol=1e-6, rtol=1e-6)
    xt = s.add_noise(x0, eps, t)
    for i in range(3):
        rec = s.step(v[i : i + 1], int(t[i]), xt[i : i + 1], generator=torch.Generator()).pred_original_sample
        torch.testing.assert_close(rec, x0[i : i + 1], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ the scheduler's public maths surface


def test_q_sample_is_ho_eq_4_and_predict_x0_inverts_it():
    """q_sample(x_0, eps, t) = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps (Ho eq. 4, written here in float64),
    and predict_x0 recovers x_0 from the eps / x_0 / v that produced x_t (Ho eq. 15; Salimans & Ho 2022)."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g).double(), torch.randn(3, 2, 4, 4, generator=g).double()
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        s = DDPMHFScheduler(prediction_type=prediction_type)
        for t in (0, 400, 999):
            ab = s.alphas_cumprod.double()[t]
            want = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            x_t = s.q_sample(x0.float(), eps.float(), torch.full((3,), t))
            torch.testing.assert_close(x_t.double(), want, atol=2e-6, rtol=0)
            torch.testing.assert_close(s.add_noise(x0.float(), eps.float(), torch.full((3,), t)), x_t)
            output = {"epsilon": eps, "sample": x0, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}
            recovered = s.predict_x0(output[prediction_type].float(), t, want.float())
            torch.testing.assert_close(recovered.double(), x0, atol=2e-3 if t == 999 else 1e-4, rtol=0)


@pytest.mark.parametrize("t, prev", [(999, 899), (500, 250), (10, 0), (10, -1)])
def test_posterior_of_any_pair_is_bayes_rule(t, prev):
    """posterior(t, s): q(x_s | x_t, x_0) for a kept pair, from Bayes' rule on the Gaussians q(x_t | x_s) =
    N(sqrt(ab_t/ab_s) x_s, (1 - ab_t/ab_s) I) and q(x_s | x_0) = N(sqrt(ab_s) x_0, (1 - ab_s) I), in float64 here."""
    s = DDPMHFScheduler()
    ab = s.alphas_cumprod.double()
    ab_t, ab_s = ab[t], (ab[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
    a, var_fwd, var_prior = (ab_t / ab_s).sqrt(), 1 - ab_t / ab_s, 1 - ab_s
    precision = a**2 / var_fwd + (1 / var_prior if prev >= 0 else math.inf)
    post = s.posterior(t, prev)
    if prev >= 0:
        var = 1 / precision
        torch.testing.assert_close(post.variance.double(), var, atol=1e-9, rtol=1e-4)
        torch.testing.assert_close(post.mean_from_xt.double(), var * a / var_fwd, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(post.mean_from_x0.double(), var * ab_s.sqrt() / var_prior, atol=1e-6, rtol=1e-4)
    else:  # s = -1: x_s is x_0 itself
        assert float(post.variance) == 0 and float(post.mean_from_x0) == 1 and float(post.mean_from_xt) == 0
    torch.testing.assert_close(post.beta.double(), var_fwd, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log",
                                           "learned", "learned_range"])
def test_model_variance_is_the_variance_of_each_type(variance_type):
    """model_variance(t, channels) is sigma_t^2 and its log for every variance_type: betatilde'_t or beta'_t (Ho
    sec. 3.2, over the respaced pair), the channels (learned), exp(frac log beta' + (1 - frac) log betatilde')
    (learned_range, Nichol & Dhariwal eq. 15), written here in float64; and it is the variance of step's noise."""
    s = DDPMHFScheduler(variance_type=variance_type)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    v = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1 if variance_type == "learned_range" else torch.rand(
        2, 1, 4, 4, generator=g) * 0.01 + 1e-3
    ab = s.alphas_cumprod.double()
    t, prev = 500, 400
    beta = 1 - ab[t] / ab[prev]
    betatilde = (1 - ab[prev]) / (1 - ab[t]) * beta
    want = {
        "fixed_small": betatilde, "fixed_small_log": betatilde, "fixed_large": beta, "fixed_large_log": beta,
        "learned": v.double(), "learned_range": torch.exp((v.double() + 1) / 2 * beta.log()
                                                          + (1 - v.double()) / 2 * betatilde.log()),
    }[variance_type]
    learned = variance_type.startswith("learned")
    variance, log_variance = s.model_variance(t, v if learned else None)
    torch.testing.assert_close(variance.double().expand_as(v), torch.as_tensor(want).expand_as(v), atol=0, rtol=1e-4)
    torch.testing.assert_close(log_variance.exp(), variance, atol=0, rtol=1e-5)
    # the noise step adds: x_s - mean over many draws of z has this variance
    x = torch.zeros(4000, 1, 4, 4)
    eps = torch.zeros_like(x)
    output = torch.cat([eps, v.repeat(2000, 1, 1, 1)], 1) if learned else eps
    drawn = s.step(output, t, x, generator=torch.Generator().manual_seed(2)).prev_sample
    empirical = drawn.var(0)
    expected = variance.expand(2, 1, 4, 4).mean(0) if learned else variance.expand(1, 4, 4)
    if learned:  # the two halves of the batch used the two images' channels
        empirical = torch.stack([drawn[0::2].var(0), drawn[1::2].var(0)])
        expected = variance
    torch.testing.assert_close(empirical.double(), expected.double().expand_as(empirical), atol=0, rtol=0.15)


def test_split_model_output_separates_the_variance_channels_by_the_sample_channels():
    s = DDPMHFScheduler()
    out = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).view(2, 6, 2, 2)
    prediction, variance = s.split_model_output(out, 3)
    assert torch.equal(prediction, out[:, :3]) and torch.equal(variance, out[:, 3:])
    prediction, variance = s.split_model_output(out, 6)
    assert torch.equal(prediction, out) and variance is None
    with pytest.raises(ValueError, match="channels"):
        s.split_model_output(out, 4)


def test_step_x0_transform_acts_on_the_clipped_x0_and_is_not_clipped_again():
    """step(..., x0_transform=f) uses f(clip(x0)) in the posterior mean (Ho eq. 7) as it is, and returns it."""
    s = DDPMHFScheduler(clip_sample=True)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(2, 1, 4, 4, generator=g) * 3, torch.randn(2, 1, 4, 4, generator=g)
    seen = []

    def transform(x0):
        seen.append(x0.clone())
        return x0 + 5.0  # leaves [-1, 1]

    out = s.step(eps, 900, x, x0_transform=transform)
    clipped = s.predict_x0(eps, 900, x).clamp(-1, 1)
    torch.testing.assert_close(seen[0], clipped)
    torch.testing.assert_close(out.pred_original_sample, clipped + 5.0)
    post = s.posterior(900, 800)
    mean = post.mean_from_x0 * (clipped + 5.0) + post.mean_from_xt * x
    noise = s.step(eps, 900, x, generator=torch.Generator().manual_seed(4)).prev_sample - (
        post.mean_from_x0 * clipped + post.mean_from_xt * x)
    again = s.step(eps, 900, x, generator=torch.Generator().manual_seed(4), x0_transform=lambda x0: x0 + 5.0)
    torch.testing.assert_close(again.prev_sample, mean + noise, atol=1e-5, rtol=0)


def test_snr_is_alphabar_over_one_minus_alphabar():
    """SNR(t) = alphabar_t / (1 - alphabar_t) (Kingma et al. 2021 eq. 2) with alphabar_t the product of 1 - beta_s
    over Ho's linear betas (1e-4 .. 0.02, T = 1000), written here in float64; losses.snr gives the same for diffusers'
    scheduler."""
    import numpy as np
    from diffusers import DDPMScheduler

    from ddpm_hf import DDPMHFScheduler
    from ddpm_hf.losses import snr

    betas = np.linspace(1e-4, 0.02, 1000)
    alphabar = np.cumprod(1 - betas)
    t = torch.tensor([0, 1, 10, 500, 999])
    want = alphabar[t.numpy()] / (1 - alphabar[t.numpy()])
    # the schedulers keep alphabar in float32 (as diffusers does): 1 - alphabar_1 = 1e-4 carries a relative error of
    # about 6e-8 / 1e-4
    np.testing.assert_allclose(DDPMHFScheduler().snr(t).numpy(), want, rtol=1e-3)
    np.testing.assert_allclose(snr(DDPMScheduler(), t).numpy(), want, rtol=1e-3)

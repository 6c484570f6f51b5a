"""The variational bound: Gaussian KL, the discretized decoder, p(x_{t-1}|x_t), and bits/dim on data whose answer
is known."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_hf import DDPMHFScheduler
from ddpm_hf.likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl, prior_kl, vlb_terms

LEVELS = torch.linspace(-1, 1, 256, dtype=torch.float64)  # the 256 bin centres of [-1, 1]


def test_normal_kl_closed_form_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    ours = normal_kl(m1, lv1, m2, lv2)
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(ours, torch.distributions.kl_divergence(p, q))
    x = p.sample((400_000,))
    mc = (p.log_prob(x) - q.log_prob(x)).mean(0)
    torch.testing.assert_close(ours, mc, atol=0.03, rtol=0.02)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


@pytest.mark.parametrize("mean,std", [(0.0, 0.3), (0.5, 0.01), (-0.97, 0.05), (0.2, 2.0), (0.999, 0.002)])
def test_decoder_bins_are_gaussian_integrals(mean, std):
    """Each bin's probability is the integral of N(mean, std^2) over the bin (Ho eq. 13), the edge bins take the
    tails, and the 256 probabilities sum to 1."""
    logp = discretized_gaussian_log_likelihood(
        LEVELS, torch.tensor(mean, dtype=torch.float64), torch.tensor(math.log(std), dtype=torch.float64)
    )
    probs = logp.exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-9)
    # numerical integration of the density with the trapezoid rule, per interior bin
    half = 1.0 / 255
    for k in (1, 64, 127, 128, 200, 254):
        grid = torch.linspace(LEVELS[k] - half, LEVELS[k] + half, 2001, dtype=torch.float64)
        density = torch.exp(-0.5 * ((grid - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
        integral = torch.trapezoid(density, grid).item()
        assert probs[k].item() == pytest.approx(integral, rel=1e-4, abs=1e-12)
    # edges: all the mass below -1 + 1/255, above 1 - 1/255
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
    assert probs[0].item() == pytest.approx(normal.cdf(torch.tensor(-1 + half)).item(), rel=1e-6, abs=1e-15)
    assert probs[-1].item() == pytest.approx(1 - normal.cdf(torch.tensor(1 - half)).item(), rel=1e-6, abs=1e-15)


def test_decoder_far_tails_stay_finite():
    logp = discretized_gaussian_log_likelihood(
        torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), torch.tensor(0.9), torch.tensor(math.log(1e-3))
    )
    assert torch.isfinite(logp).all() and (logp <= 0).all()


def _consistent_outputs(sched, x0, eps, t):
    ab = sched.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    return {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0,
    }, ab.sqrt() * x0 + (1 - ab).sqrt() * eps


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_model_mean_with_the_true_prediction_is_the_posterior_mean(prediction_type):
    sched = DDPMHFScheduler(prediction_type=prediction_type, clip_sample=False)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 400, 999])
    outputs, xt = _consistent_outputs(sched, x0, eps, t)
    p = sched.p_mean_variance(outputs[prediction_type], xt, t)
    true_mean, _, _ = sched.posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(p["pred_x0"], x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p["mean"], true_mean, atol=1e-6, rtol=1e-5)
    # with the posterior variance too, every KL term vanishes
    learned = DDPMHFScheduler(prediction_type=prediction_type, clip_sample=False, variance_type="learned")
    _, post_var, _ = learned.posterior_mean_variance(x0, xt, t)
    out = torch.cat([outputs[prediction_type], post_var.expand_as(x0)], dim=1)
    kl = vlb_terms(learned, out, x0, xt, t)
    assert kl[1:].abs().max().item() < 1e-6


def test_variance_types():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 600])
    fixed_small = DDPMHFScheduler(variance_type="fixed_small")
    tables = fixed_small.alphas_cumprod.double()
    betas = 1 - tables / torch.cat([torch.ones(1, dtype=torch.float64), tables[:-1]])
    post = (1 - torch.cat([torch.ones(1, dtype=torch.float64), tables[:-1]])) / (1 - tables) * betas
    def variance(sched, out):
        return sched.p_mean_variance(out, x, t)["variance"].expand_as(x)[:, 0, 0, 0]

    small = variance(fixed_small, x)
    # betatilde_t, with betatilde_2 standing in for betatilde_1 = 0 at the decoder step
    torch.testing.assert_close(small, torch.stack([post[1], post[1], post[600]]))
    fixed_large = DDPMHFScheduler(variance_type="fixed_large")
    large = variance(fixed_large, x)
    torch.testing.assert_close(large, torch.stack([post[1], betas[1], betas[600]]))
    # the documented difference at t = 0 (paper t = 1): the bound's decoder takes betatilde_2 for fixed_large
    # (improved-diffusion's), the sampler's model_variance the unreplaced beta_1; step adds no noise there
    assert fixed_large.model_variance(0)[0].item() == pytest.approx(betas[0].item(), rel=1e-6)
    assert large[0].item() == pytest.approx(post[1].item()) and abs(post[1] - betas[0]) > 0.3 * betas[0]
    learned_range = DDPMHFScheduler(variance_type="learned_range")
    for v, want in ((1.0, torch.stack([betas[0], betas[1], betas[600]])), (-1.0, small)):
        out = torch.cat([x, torch.full_like(x, v)], dim=1)
        torch.testing.assert_close(variance(learned_range, out), want)
    # v = 0 is the geometric mean (Nichol & Dhariwal eq. 15)
    out = torch.cat([x, torch.zeros_like(x)], dim=1)
    torch.testing.assert_close(variance(learned_range, out)[2], (betas[600] * post[600]).sqrt())


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_diffusers_scheduler_gives_the_same_bound(prediction_type, variance_type):
    """diffusers' DDPMScheduler (converted by ``from_config``, as the task pipelines do) gives the same terms."""
    kwargs = dict(prediction_type=prediction_type, variance_type=variance_type, num_train_timesteps=100)
    ours, theirs = DDPMHFScheduler(**kwargs), DDPMScheduler(**kwargs)
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    xt = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    channels = 4 if variance_type == "learned_range" else 2
    out = torch.rand(3, channels, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 1, 99])
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    assert torch.equal(vlb_terms(ours, out, x0, xt, t), vlb_terms(theirs, out, x0, xt, t))


def test_detach_mean_sends_the_vlb_gradient_to_the_variance_only():
    sched = DDPMHFScheduler(variance_type="learned_range", clip_sample=False)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    xt = torch.randn(2, 1, 4, 4, generator=g)
    out = torch.randn(2, 2, 4, 4, generator=g, requires_grad=True)
    t = torch.tensor([10, 500])
    vlb_terms(sched, out, x0, xt, t, detach_mean=True).sum().backward()
    assert out.grad[:, :1].abs().max() == 0 and out.grad[:, 1:].abs().max() > 0
    out.grad = None
    vlb_terms(sched, out, x0, xt, t).sum().backward()
    assert out.grad[:, :1].abs().max() > 0


def test_prior_term_is_small_for_the_linear_schedule():
    sched = DDPMHFScheduler()
    x0 = torch.ones(2, 3, 8, 8, dtype=torch.float64)
    # KL(N(sqrt(ab_T), 1 - ab_T) || N(0, 1)) per dimension, written out
    ab = sched.alphas_cumprod[-1].double()
    per_dim = 0.5 * (-torch.log(1 - ab) + (1 - ab) + ab - 1)
    torch.testing.assert_close(prior_kl(sched, x0), (per_dim * 192).expand(2), rtol=1e-9, atol=0)


def _gaussian_optimal_model(sched, s2):
    """For data x0 ~ N(0, s2 I) the true reverse conditionals are Gaussian: with v_t = alphabar_t s2 + 1 - alphabar_t,
    E[x0 | x_t] = sqrt(alphabar_t) s2 / v_t x_t and Var[x_{t-1} | x_t] = v_{t-1} - alpha_t v_{t-1}^2 / v_t.
    Returns a model that outputs the matching eps and that variance (variance_type "learned")."""
    ab = sched.alphas_cumprod.double()
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    v, v_prev = ab * s2 + 1 - ab, ab_prev * s2 + 1 - ab_prev
    cond_var = v_prev - (ab / ab_prev) * v_prev**2 / v

    def model(x, t):
        i = int(t[0])
        x0_hat = math.sqrt(ab[i]) * s2 / v[i] * x
        eps = (x - math.sqrt(ab[i]) * x0_hat) / math.sqrt(1 - ab[i])
        return torch.cat([eps, torch.full_like(x, cond_var[i].item())], dim=1)

    return model


def _discrete_entropy_bits(probs):
    probs = probs[probs > 0]
    return -(probs * probs.log2()).sum().item()


@pytest.mark.slow  # the full 1000-term bound of 256 images
def test_bits_per_dim_of_the_true_model_on_gaussian_data():
    """Data: N(0, 0.2^2) quantised to the 256 levels. A model whose reverse steps are the true ones must reach the
    data's entropy (the bound is tight up to the decoder's Gaussian approximation of the last bin)."""
    s = 0.2
    sched = DDPMHFScheduler(variance_type="learned", clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(256, 1, 8, 8, generator=g, dtype=torch.float64) * s).clamp(-1, 1)
    x = ((x + 1) * 127.5).round() / 127.5 - 1
    result = bits_per_dim(_gaussian_optimal_model(sched, s * s), sched, x, generator=g, progress=False)
    # entropy of the quantised Gaussian, per dimension
    normal = torch.distributions.Normal(0.0, s)
    edges = torch.cat([torch.tensor([-math.inf]), (LEVELS[:-1] + 1 / 255).float(), torch.tensor([math.inf])])
    entropy = _discrete_entropy_bits(normal.cdf(edges[1:]) - normal.cdf(edges[:-1]))
    mean, se = result.total.mean().item(), result.total.std().item() / math.sqrt(len(result.total))
    assert entropy == pytest.approx(6.72, abs=0.01)
    assert entropy - 3 * se < mean < entropy + 0.06, (mean, se, entropy)
    torch.testing.assert_close(result.total, result.prior + result.terms.sum(1))
    assert result.terms.shape == (256, 1000) and result.prior.max() < 1e-4


@pytest.mark.slow  # the full 1000-term bound of 256 images
def test_uniform_noise_costs_about_8_bits_per_dim():
    """Pixels uniform over the 256 levels have exactly 8 bits of entropy; the bound of the best Gaussian-data model
    (variance 1/3, the uniform's) must lie just above it."""
    sched = DDPMHFScheduler(variance_type="learned", clip_sample=False)
    g = torch.Generator().manual_seed(1)
    x = LEVELS[torch.randint(0, 256, (256, 1, 8, 8), generator=g)]
    result = bits_per_dim(_gaussian_optimal_model(sched, 1 / 3), sched, x, generator=g, progress=False)
    mean, se = result.total.mean().item(), result.total.std().item() / math.sqrt(len(result.total))
    assert 8.0 - 3 * se < mean < 8.35, mean


def test_bits_per_dim_rejects_unscaled_images():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        bits_per_dim(lambda x, t: x, DDPMHFScheduler(), torch.full((1, 1, 2, 2), 255.0), progress=False)


def test_forward_jump_composes_with_q_sample_into_ho_eq_4():
    """q_sample_from(x_s, eps, t, s) after x_s ~ q(x_s | x_0) is a draw of q(x_t | x_0) = N(sqrt(alphabar_t) x_0,
    (1 - alphabar_t) I) (Ho eq. 4), checked by Monte Carlo; from s = -1 (the clean image) it is q_sample itself."""
    sched = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2")
    g = torch.Generator().manual_seed(5)
    n, s, t = 200_000, 300, 700
    x0 = torch.full((n, 1, 1, 1), 0.6)
    x_s = sched.q_sample(x0, torch.randn(x0.shape, generator=g), torch.full((n,), s))
    x_t = sched.q_sample_from(x_s, torch.randn(x0.shape, generator=g), t, s)
    ab = sched.alphas_cumprod[t].double()
    assert abs(x_t.mean().item() - 0.6 * ab.sqrt().item()) < 4 * math.sqrt((1 - ab) / n)
    assert abs(x_t.var().item() - (1 - ab).item()) < 4 * (1 - ab).item() * math.sqrt(2 / n)
    eps = torch.randn(x0[:4].shape, generator=g)
    from_clean = sched.q_sample_from(x0[:4], eps, t, -1)
    torch.testing.assert_close(from_clean, sched.q_sample(x0[:4], eps, torch.full((4,), t)))


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_every_term_of_a_wrong_model_against_its_closed_form(variance_type):
    """An independent reference for each term L_{t-1}, t >= 1 (Ho eq. 5), and the prior L_T: for a model that is
    wrong on purpose, eps_hat(x_t, t) = c x_t, the expected KL over x_t ~ q(x_t | x_0) has a closed form, written
    here from the equations alone (betas in, nothing from the scheduler's tables): Ho eq. 7's posterior
    mu~ = a x_0 + b x_t with variance beta~ (a = sqrt(ab_{t-1}) beta_t / (1 - ab_t), b = sqrt(alpha_t) (1 - ab_{t-1})
    / (1 - ab_t)); the model's mean a x0_hat + b x_t with x0_hat = k x_t, k = (1 - sqrt(1 - ab_t) c) / sqrt(ab_t)
    (Ho eq. 15) and its variance beta~_t or beta_t; mu~ - mu = a ((1 - k sqrt(ab_t)) x_0 - k sqrt(1 - ab_t) eps), so
    E[KL] = 1/2 (log(s_p / beta~) + (beta~ + a^2 ((1 - k sqrt(ab))^2 x_0^2 + k^2 (1 - ab))) / s_p - 1). The bound's
    Monte Carlo terms (200,000 draws of x_t for one pixel x_0 = 0.5) must match it within 4 standard errors."""
    from ddpm_hf.likelihood import vlb_term_at

    T, c, x0 = 10, 0.5, 0.5
    sched = DDPMHFScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type=variance_type,
                            clip_sample=False)
    betas = sched.betas.double()
    ab = torch.cumprod(1 - betas, 0)
    x = torch.full((200_000, 1, 1, 1), x0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for t in range(1, T):
        ab_t, ab_s, beta = ab[t].item(), ab[t - 1].item(), betas[t].item()
        a = math.sqrt(ab_s) * beta / (1 - ab_t)
        tilde = (1 - ab_s) / (1 - ab_t) * beta
        s_p = tilde if variance_type == "fixed_small" else beta
        k = (1 - math.sqrt(1 - ab_t) * c) / math.sqrt(ab_t)
        squared = a**2 * ((1 - k * math.sqrt(ab_t)) ** 2 * x0**2 + k**2 * (1 - ab_t))
        want = 0.5 * (math.log(s_p / tilde) + (tilde + squared) / s_p - 1)
        terms = vlb_term_at(lambda x_t, _: c * x_t, sched, x, torch.full((len(x),), t), g)
        se = terms.std().item() / math.sqrt(len(terms))
        assert abs(terms.mean().item() - want) < 4 * se + 1e-9, (t, terms.mean().item(), want, se)
    # the prior L_T = KL(q(x_T | x_0) || N(0, 1)), in bits/dim for one pixel
    prior = 0.5 * (ab[-1].item() * x0**2 + (1 - ab[-1].item()) - 1 - math.log(1 - ab[-1].item())) / math.log(2)
    assert prior_kl(sched, x[:1]).item() / math.log(2) == pytest.approx(prior, rel=1e-6)

"""DDPMHFScheduler against the installed diffusers DDPMScheduler: same timesteps, same steps, same noise draws."""

import itertools

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from ddpm_hf import DDPMHFScheduler

BETA_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"]
PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
# (clip_sample, thresholding)
SAMPLE_LIMITS = [(False, False), (True, False), (False, True)]


def _close(ours, theirs, amplification=1.0):
    """|ours - theirs| <= 1e-5 * amplification + 1e-6 |theirs|: 1e-5 absolute at the scale of images, plus float32
    rounding for the large unclipped x0 that appear at t near T. ``amplification`` is the factor by which the x0
    formula magnifies the rounding of its inputs (1 / sqrt(alphabar_t) for epsilon)."""
    diff = (ours.double() - theirs.double()).abs()
    bound = 1e-5 * amplification + 1e-6 * theirs.double().abs()
    return bool((diff <= bound).all()), diff.max().item()


def _model_output(variance_type, shape, dtype, generator):
    out = torch.randn(shape, generator=generator, dtype=dtype)
    if variance_type == "learned":  # diffusers takes these channels as sigma^2 itself
        var = torch.rand(shape, generator=generator, dtype=dtype) * 0.05 + 1e-4
        out = torch.cat([out, var], dim=1)
    elif variance_type == "learned_range":  # v in [-1, 1]
        out = torch.cat([out, torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1], dim=1)
    return out


def _schedules():
    """(set_timesteps kwargs) covering several step counts and custom timesteps."""
    return [
        dict(num_inference_steps=1000),
        dict(num_inference_steps=50),
        dict(num_inference_steps=7),
        dict(num_inference_steps=1),
        dict(timesteps=[999, 800, 500, 123, 40, 3, 0]),
        dict(timesteps=[700, 650, 10]),
    ]


def _generators(seed, batch, as_list):
    if as_list:
        return [torch.Generator().manual_seed(seed + 7 * i) for i in range(batch)]
    return torch.Generator().manual_seed(seed)


def _diffusers_noise(theirs, t, output, shape, dtype, generator):
    """The sigma_t z that diffusers' ``step`` adds at t > 0, rebuilt from its own ``_get_variance`` and a generator
    in the state its ``step`` starts from."""
    z = randn_tensor(shape, generator=generator, dtype=dtype)
    predicted_variance = output[:, shape[1]:] if output.shape[1] == 2 * shape[1] else None
    variance = theirs._get_variance(t, predicted_variance=predicted_variance)
    if theirs.variance_type == "fixed_small_log":  # _get_variance returns a standard deviation
        return variance * z
    if theirs.variance_type == "learned_range":  # a log variance
        return torch.exp(0.5 * variance) * z
    return variance**0.5 * z


def _compare_chain(kwargs, schedule, shape, dtype, list_generators, rng):
    """Step both schedulers from the same x_t and output with equally seeded generators. Everywhere but at the last
    step of a chain ending above timestep 0 they must agree; there ours adds no noise (Ho Algorithm 2) and diffusers
    adds sigma_t z, so ours must equal diffusers' result minus that noise, and ours must leave the generator alone."""
    ours, theirs = DDPMHFScheduler(**kwargs), DDPMScheduler(**kwargs)
    ours.set_timesteps(**schedule)
    theirs.set_timesteps(**schedule)
    assert torch.equal(ours.timesteps, theirs.timesteps), (kwargs, schedule)
    timesteps = theirs.timesteps.tolist()
    # every step of short chains, a spread of steps (ends included) of long ones
    picks = sorted(set(range(0, len(timesteps), max(1, len(timesteps) // 6))) | {len(timesteps) - 1})
    seed = int(rng.integers(1 << 30))
    for k in picks:
        t = theirs.timesteps[k]
        sample = torch.randn(shape, generator=torch.Generator().manual_seed(seed + k), dtype=dtype)
        output = _model_output(kwargs["variance_type"], shape, dtype, torch.Generator().manual_seed(seed - k))
        g1, g2 = (_generators(seed, shape[0], list_generators) for _ in range(2))
        a = ours.step(output, t, sample, generator=g1)
        b = theirs.step(output, t, sample, generator=g2)
        last_above_0 = k == len(timesteps) - 1 and int(t) > 0
        want = b.prev_sample
        if last_above_0:
            want = want - _diffusers_noise(
                theirs, t, output, shape, dtype, _generators(seed, shape[0], list_generators)
            )
        ok, worst = _close(a.prev_sample, want)
        assert ok, f"prev_sample differs by {worst} for {kwargs} {schedule} t={int(t)} {dtype}"
        amplification = 1.0
        if kwargs.get("prediction_type", "epsilon") == "epsilon":
            amplification = theirs.alphas_cumprod[int(t)].item() ** -0.5
        ok, worst = _close(a.pred_original_sample, b.pred_original_sample, amplification)
        assert ok, f"pred_original_sample differs by {worst} for {kwargs} {schedule} t={int(t)}"
        assert a.prev_sample.dtype == b.prev_sample.dtype and a.prev_sample.shape == b.prev_sample.shape
        # the same number of draws from the same generators (none at our last step)
        untouched = _generators(seed, shape[0], list_generators)
        reference = untouched if last_above_0 else g2
        for x, y in zip(*(g if list_generators else [g] for g in (g1, reference))):
            assert torch.equal(x.get_state(), y.get_state())
        assert ours.previous_timestep(t) == theirs.previous_timestep(t)


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_step_matches_diffusers_over_the_option_grid(variance_type, prediction_type):
    """Every combination of beta_schedule, clip/threshold, timestep_spacing, steps_offset, rescale_betas_zero_snr;
    several step counts and custom timesteps; float32 and float64; one generator or a list of them."""
    # inputs fixed per case by its indices (a string's hash is salted per interpreter), so a failure reproduces
    rng = np.random.default_rng([VARIANCE_TYPES.index(variance_type), PREDICTION_TYPES.index(prediction_type)])
    grid = itertools.product(
        BETA_SCHEDULES, SAMPLE_LIMITS, ["leading", "trailing", "linspace"], [0, 1], [False, True]
    )
    checked = 0
    for beta_schedule, (clip, threshold), spacing, offset, zero_snr in grid:
        if zero_snr and prediction_type == "epsilon":
            continue  # alphabar_T = 0: an epsilon model cannot recover x0 at t = T (both return inf/nan there)
        kwargs = dict(
            beta_schedule=beta_schedule,
            variance_type=variance_type,
            prediction_type=prediction_type,
            clip_sample=clip,
            thresholding=threshold,
            sample_max_value=1.5,
            clip_sample_range=1.0 if not clip else 0.8,
            timestep_spacing=spacing,
            steps_offset=offset,
            rescale_betas_zero_snr=zero_snr,
        )
        schedule = _schedules()[checked % len(_schedules())]
        dtype = torch.float64 if checked % 2 else torch.float32
        shape = [(2, 3, 8, 8), (1, 1, 5, 7), (3, 2, 4, 4)][checked % 3]
        _compare_chain(kwargs, schedule, shape, dtype, list_generators=checked % 4 == 1, rng=rng)
        checked += 1
    assert checked == (90 if prediction_type == "epsilon" else 180)


@pytest.mark.parametrize("schedule", _schedules(), ids=lambda s: str(s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_step_schedule_matches(schedule, dtype):
    """The default config over every schedule and dtype, every step of the chain."""
    rng = np.random.default_rng(0)
    for variance_type in VARIANCE_TYPES:
        _compare_chain(dict(variance_type=variance_type), schedule, (2, 1, 6, 6), dtype, False, rng)


def test_trained_betas_match():
    betas = np.linspace(1e-4, 0.03, 200) ** 1.1
    kwargs = dict(num_train_timesteps=200, trained_betas=betas.tolist(), variance_type="fixed_large")
    _compare_chain(kwargs, dict(num_inference_steps=20), (2, 3, 4, 4), torch.float32, False, np.random.default_rng(1))
    assert torch.equal(DDPMHFScheduler(**kwargs).alphas_cumprod, DDPMScheduler(**kwargs).alphas_cumprod)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_tables_and_forward_process_match(beta_schedule, zero_snr):
    kwargs = dict(beta_schedule=beta_schedule, rescale_betas_zero_snr=zero_snr)
    ours, theirs = DDPMHFScheduler(**kwargs), DDPMScheduler(**kwargs)
    assert torch.equal(ours.betas, theirs.betas)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=dtype)
        noise = torch.randn(5, 3, 4, 4, generator=g, dtype=dtype)
        t = torch.tensor([0, 10, 500, 998, 999])
        for name in ("add_noise", "get_velocity"):
            a, b = getattr(ours, name)(x0, noise, t), getattr(theirs, name)(x0, noise, t)
            assert a.dtype == b.dtype == dtype
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        # a single timestep broadcasts over the batch
        torch.testing.assert_close(
            ours.add_noise(x0, noise, torch.tensor(123)), theirs.add_noise(x0, noise, torch.tensor(123)),
            atol=1e-6, rtol=1e-5,
        )


def test_default_chain_before_set_timesteps():
    ours, theirs = DDPMHFScheduler(), DDPMScheduler()
    assert torch.equal(ours.timesteps, theirs.timesteps)
    for t in (999, 500, 1, 0):
        assert ours.previous_timestep(t) == theirs.previous_timestep(t) == t - 1
    x, out = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    a = ours.step(out, 500, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = theirs.step(out, 500, x, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_fixed_large_log_is_fixed_large():
    """diffusers' step takes the square root of log(beta_t) for fixed_large_log and returns NaN for every t > 0;
    ours uses sigma_t^2 = beta_t (its meaning in GLIDE), identical to diffusers' fixed_large."""
    ours = DDPMHFScheduler(variance_type="fixed_large_log")
    theirs_large, theirs_log = DDPMScheduler(variance_type="fixed_large"), DDPMScheduler(variance_type="fixed_large_log")
    for s in (ours, theirs_large, theirs_log):
        s.set_timesteps(20)
    x, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = ours.timesteps[3]
    a = ours.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = theirs_large.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    c = theirs_log.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert torch.isnan(c).all()


def test_config_surface_and_from_config_both_ways():
    theirs = DDPMScheduler()
    ours = DDPMHFScheduler()
    public = lambda config: {k: v for k, v in dict(config).items() if not k.startswith("_")}  # noqa: E731
    assert public(ours.config) == public(theirs.config)
    # ours keeps no record of which values were defaults: from_config into any scheduler keeps them all
    assert "_use_default_values" not in ours.config and "_use_default_values" in theirs.config
    custom = dict(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", prediction_type="v_prediction",
                  timestep_spacing="trailing", steps_offset=1, clip_sample=False, num_train_timesteps=400)
    there = DDPMScheduler.from_config(DDPMHFScheduler(**custom).config)
    back = DDPMHFScheduler.from_config(there.config)
    for key, value in custom.items():
        assert there.config[key] == value and back.config[key] == value
    assert "DDPMScheduler" in DDPMHFScheduler._compatibles
    assert DDPMHFScheduler.order == 1 and ours.init_noise_sigma == 1.0 and len(ours) == 1000
    x = torch.randn(1, 3, 2, 2)
    assert ours.scale_model_input(x, 10) is x


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="variance_type"):
        DDPMHFScheduler(variance_type="large")
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPMHFScheduler(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMHFScheduler(prediction_type="noise")
    with pytest.raises(ValueError, match="trained_betas"):
        DDPMHFScheduler(num_train_timesteps=10, trained_betas=[0.1] * 9)
    s = DDPMHFScheduler()
    with pytest.raises(ValueError, match="cannot be larger"):
        s.set_timesteps(1001)
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match="one of"):
        s.set_timesteps(10, timesteps=[5, 1])
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        s.step(torch.zeros(1, 1, 2, 2), 7, torch.zeros(1, 1, 2, 2))
    learned = DDPMHFScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="twice the sample's channels"):
        learned.step(torch.zeros(1, 1, 2, 2), 999, torch.zeros(1, 1, 2, 2))


# (config, set_timesteps kwargs) of chains whose last timestep is above 0
CHAINS_ENDING_ABOVE_0 = [
    (dict(timestep_spacing="trailing"), dict(num_inference_steps=10)),  # 999, 899, ..., 99
    (dict(steps_offset=1), dict(num_inference_steps=10)),  # 901, 801, ..., 1
    ({}, dict(timesteps=[700, 650, 10])),
]


@pytest.mark.parametrize("config,schedule", CHAINS_ENDING_ABOVE_0, ids=["trailing", "steps_offset", "custom"])
def test_last_step_adds_no_noise_when_the_chain_ends_above_0(config, schedule):
    """Ho Algorithm 2 sets z = 0 at the chain's last step. There alphabar_s = 1, so the posterior mean (Ho eq. 7) is
    x0_hat itself (mean_from_x0 = 1, mean_from_xt = 0): ours returns it whatever the generator. diffusers adds
    sigma z whenever t > 0, with sigma^2 = beta' = 1 - alphabar_t for fixed_large: measured here."""
    kwargs = dict(variance_type="fixed_large", **config)
    ours, theirs = DDPMHFScheduler(**kwargs), DDPMScheduler(**kwargs)
    ours.set_timesteps(**schedule)
    theirs.set_timesteps(**schedule)
    t = ours.timesteps[-1]
    assert int(t) > 0 and ours.previous_timestep(t) == theirs.previous_timestep(t) == -1
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(16, 3, 32, 32, generator=g), torch.randn(16, 3, 32, 32, generator=g)
    ab = theirs.alphas_cumprod[int(t)].double()
    x0 = ((x.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()).clamp(-1, 1)  # Ho eq. 15, clipped

    finals = [ours.step(eps, t, x, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    for out in finals:
        assert torch.equal(out.prev_sample, out.pred_original_sample)
        assert torch.equal(out.prev_sample, finals[0].prev_sample)
    torch.testing.assert_close(finals[0].prev_sample.double(), x0, atol=1e-5, rtol=0)

    theirs_final = theirs.step(eps, t, x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(theirs_final.pred_original_sample, finals[0].pred_original_sample, atol=1e-6, rtol=0)
    std = (theirs_final.prev_sample - finals[0].prev_sample).double().std().item()
    assert std == pytest.approx((1 - ab).sqrt().item(), rel=0.02)
    if config.get("timestep_spacing") == "trailing":
        assert std > 0.1, std  # 0.32 measured with diffusers 0.42.1 (T = 1000, linear betas, 10 trailing steps)


@pytest.mark.parametrize("variance_type", ["fixed_large", "learned_range"])
def test_chain_ending_at_0_matches_diffusers_to_the_final_image(variance_type):
    """With the chain ending at timestep 0 (leading spacing) the last step of both adds no noise (t = 0): the whole
    chain, from the same x_T with equally seeded generators, gives diffusers' final image."""
    ours, theirs = (cls(variance_type=variance_type) for cls in (DDPMHFScheduler, DDPMScheduler))
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert ours.timesteps[-1] == 0
    g_ours, g_theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x_ours = x_theirs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for t in theirs.timesteps:
        out = 0.5 * x_theirs + 0.3 * torch.randn(x_theirs.shape, generator=torch.Generator().manual_seed(int(t)))
        if variance_type == "learned_range":
            out = torch.cat([out, torch.rand(out.shape, generator=torch.Generator().manual_seed(-int(t))) * 2 - 1], 1)
        x_ours = ours.step(out, t, x_ours, generator=g_ours).prev_sample
        x_theirs = theirs.step(out, t, x_theirs, generator=g_theirs).prev_sample
    torch.testing.assert_close(x_ours, x_theirs, atol=1e-5, rtol=0)
    assert torch.equal(g_ours.get_state(), g_theirs.get_state())


ALL_VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]


@pytest.mark.parametrize("variance_type", ALL_VARIANCE_TYPES)
def test_get_variance_matches_diffusers(variance_type):
    """``_get_variance`` returns what diffusers' does (a variance, a std or a log variance by type), bit for bit:
    before and after set_timesteps, leading and trailing, the config's type or an override, float32 and float64
    predicted variances."""
    g = torch.Generator().manual_seed(0)
    predicted = [torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)]
    checked = 0
    for spacing, schedule in [
        ("leading", None), ("leading", dict(num_inference_steps=10)), ("trailing", dict(num_inference_steps=10)),
        ("trailing", dict(timesteps=[900, 450, 3])),
    ]:
        kwargs = dict(variance_type=variance_type, timestep_spacing=spacing)
        ours, theirs = DDPMHFScheduler(**kwargs), DDPMScheduler(**kwargs)
        if schedule is None:
            timesteps = [999, 500, 1, 0]
        else:
            ours.set_timesteps(**schedule)
            theirs.set_timesteps(**schedule)
            timesteps = [theirs.timesteps[0], theirs.timesteps[len(theirs.timesteps) // 2], theirs.timesteps[-1]]
        for t, override, pv in itertools.product(timesteps, [None] + ALL_VARIANCE_TYPES, predicted):
            pv = pv if (override or variance_type).startswith("learned") else None
            a = ours._get_variance(t, predicted_variance=pv, variance_type=override)
            b = theirs._get_variance(t, predicted_variance=pv, variance_type=override)
            assert a.dtype == b.dtype and a.shape == b.shape, (spacing, schedule, int(t), override)
            assert torch.equal(a, b), (spacing, schedule, int(t), override)
            checked += 1
    assert checked == (4 + 3 * 3) * 7 * 2



@pytest.mark.parametrize("prediction_type,clip", [(p, False) for p in PREDICTION_TYPES] + [("epsilon", True)])
def test_ddim_step_matches_diffusers_ddim(prediction_type, clip):
    """``x0_and_noise`` + ``ddim_step`` (the distillation teacher's ODE step) against diffusers' DDIMScheduler.step
    with eta = 0 (Song et al. 2021 eq. 12) over a 50-step chain, the last step to alphabar = 1 included, every
    prediction type. With clip: x0 clamped to [-1, 1] and the noise recomputed from it, as DDIMScheduler.step with
    clip_sample=True and use_clipped_model_output=True (improved-diffusion's ddim_sample), on outputs large enough
    that the clamp acts."""
    from diffusers import DDIMScheduler

    config = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                  clip_sample=clip)
    ours = DDPMHFScheduler(**config)
    theirs = DDIMScheduler(**config, set_alpha_to_one=True)
    theirs.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g)
    timesteps = theirs.timesteps.tolist()
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        output = (3 if clip else 1) * torch.randn(x.shape, generator=g)
        expected = theirs.step(output, t, x, eta=0.0, use_clipped_model_output=clip).prev_sample
        x0, eps = ours.x0_and_noise(output, x, torch.full((4,), t), clip=clip)
        got = ours.ddim_step(x0, eps, torch.full((4,), s))
        assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (t, (got - expected).abs().max())
        x = expected


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_x0_and_noise_inverts_the_forward_process(prediction_type):
    """x_t = q_sample(x_0, eps, t) (Ho eq. 4) and the output each prediction type would have: x0_and_noise returns
    (x_0, eps)."""
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([5, 300, 700, 990])
    x_t = ours.q_sample(x0, noise, t)
    output = {"epsilon": noise, "sample": x0, "v_prediction": ours.get_velocity(x0, noise, t)}[prediction_type]
    x0_hat, eps_hat = ours.x0_and_noise(output, x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4)

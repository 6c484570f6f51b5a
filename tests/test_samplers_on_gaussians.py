"""Every sampler on a distribution whose answer is known (issue 30 sec. 3).

For data x_0 ~ N(mu, s^2 I) the forward marginal is x_t ~ N(sqrt(ab_t) mu, (ab_t s^2 + 1 - ab_t) I), so the optimal
noise prediction has a closed form (Tweedie's formula applied to the Gaussian):
    eps*(x_t, t) = E[eps | x_t] = sqrt(1 - ab_t) (x_t - sqrt(ab_t) mu) / (ab_t s^2 + 1 - ab_t).
A "UNet" that returns it turns every sampler into a test: the samples' mean and variance must be mu and s^2 up to
Monte Carlo error (and the sampler's discretisation, small at these step counts). A wrong ``scale_model_input``, a
wrong variance or a wrong step formula moves them. For two classes c with means mu_c (equal weights) the null class is
the mixture, whose optimal eps is the posterior-weighted mean of the two; guidance scale 1 must give class c's
Gaussian and 0 the mixture.
"""

import math

import pytest
import torch
from diffusers import UNet2DModel

from ddpm_hf import DDPMHFImg2ImgPipeline, DDPMHFPipeline, DDPMHFScheduler
from ddpm_hf.sampling import SCHEDULERS, make_scheduler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 4000  # samples per check: 4000 x 16 pixels
MU, S = 0.3, 0.5


def alphabar_at(alphas_cumprod, t):
    """alphabar at timesteps t (a tensor, maybe fractional: Heun's and Euler's interpolated timesteps), interpolated
    linearly in log sigma, sigma = sqrt((1 - ab) / ab), as diffusers' Karras-style schedulers map sigma to t."""
    t = t.double().clamp(0, len(alphas_cumprod) - 1)
    lo, hi = t.floor().long(), t.ceil().long()
    log_sigma = 0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod)
    w = t - lo
    sigma2 = torch.exp(2 * ((1 - w) * log_sigma[lo] + w * log_sigma[hi]))
    return 1 / (1 + sigma2)


def gaussian_eps(x, ab, mu, s):
    """E[eps | x_t] for x_0 ~ N(mu, s^2 I) (module docstring); ``ab`` broadcasts against x."""
    return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)


class GaussianUNet(UNet2DModel):
    """A UNet2DModel (a tiny real one, for its config and dtype) whose output is the optimal eps of Gaussian data, per
    class when ``means`` has one entry per class (the last id is the null class: the equal mixture of the others, or
    the Gaussian of mean ``null_mean`` when given).
    With ``learned`` it also returns variance channels v = -1, which learned_range reads as the posterior variance
    beta~_t (Nichol & Dhariwal eq. 15 at v = 0 on their [0, 1] scale)."""

    def setup(self, alphas_cumprod, means, s, learned=False, null_mean=None):
        self.alphas_cumprod, self.means, self.s, self.learned = alphas_cumprod, means, s, learned
        self.null_mean = null_mean
        self.previous = None  # {t: s} of a respaced chain, to return the exact reverse variance (test below)
        return self

    def variance_channel(self, t, sample):
        """v of learned_range (log sigma^2 = v' log beta + (1 - v') log betatilde, v = 2 v' - 1): -1 (betatilde)
        unless ``previous`` gives the chain, then the v of the exact reverse variance of the step t -> s."""
        if self.previous is None:
            return -torch.ones_like(sample)
        t0 = int(t[0])
        ab_t = float(self.alphas_cumprod[t0])
        ab_s = float(self.alphas_cumprod[self.previous[t0]]) if self.previous[t0] >= 0 else 1.0
        beta = 1 - ab_t / ab_s
        tilde = max((1 - ab_s) / (1 - ab_t) * beta, 1e-20)
        exact = exact_reverse_variance(ab_t, ab_s)
        fraction = (math.log(exact) - math.log(tilde)) / (math.log(beta) - math.log(tilde)) if ab_s < 1 else 0.0
        return torch.full_like(sample, 2 * fraction - 1)

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        t = torch.as_tensor(timestep).reshape(-1)
        t = t.expand(sample.shape[0]) if t.numel() == 1 else t
        ab = alphabar_at(self.alphas_cumprod, t).view(-1, 1, 1, 1).to(sample.dtype)
        if class_labels is None:
            eps = gaussian_eps(sample, ab, self.means[0], self.s)
        else:
            per_class = torch.stack([gaussian_eps(sample, ab, m, self.s) for m in self.means])
            var = ab * self.s**2 + 1 - ab
            logp = torch.stack([-((sample - ab.sqrt() * m) ** 2).sum((1, 2, 3), keepdim=True) / (2 * var)
                                for m in self.means])
            mixture = (torch.softmax(logp, dim=0) * per_class).sum(0) if self.null_mean is None else \
                gaussian_eps(sample, ab, self.null_mean, self.s)
            labels = class_labels.long().tolist()
            eps = torch.stack([mixture[i] if c == len(self.means) else per_class[c, i] for i, c in enumerate(labels)])
        if self.learned:
            out = torch.cat([eps, self.variance_channel(t, sample)], 1)
        else:
            out = eps
        return UNet2DOutput(sample=out) if return_dict else (out,)


def gaussian_unet(scheduler, means=(MU,), learned=False, conditional=False, null_mean=None):
    unet = GaussianUNet(sample_size=4, in_channels=1, out_channels=2 if learned else 1, block_out_channels=(4,),
                        layers_per_block=1, norm_num_groups=2, down_block_types=("DownBlock2D",),
                        up_block_types=("UpBlock2D",), num_class_embeds=len(means) + 1 if conditional else None)
    return unet.setup(scheduler.alphas_cumprod.double(), means, S, learned, null_mean).eval()


def moments(images):
    """Mean and variance over all pixels of (N, 1, 4, 4) samples in [-1, 1] (the pipeline's [0, 1] output mapped
    back), and the standard errors of a Gaussian's mean and variance at that count."""
    x = images * 2 - 1
    n = x.numel()
    return x.mean().item(), x.var().item(), S / math.sqrt(n), S**2 * math.sqrt(2 / n)


def sample(pipe, steps, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=N, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                output_type="pt", **kwargs).images


# the samples are clipped to [-1, 1] by the output conversion: MU +- 4 S stays inside it only in part, so the data is
# narrow enough (MU 0.3, S 0.5: 1.4 S to the upper edge, a clipped share of 8%) -- the truth is computed clipped too
def clipped_truth(mu=MU, s=S, n=400_000):
    x = (mu + s * torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).clamp(-1, 1)
    return x.mean().item(), x.var().item()


STEPS = {"ddpm": 250, "ddim": 100, "dpmsolver++": 50, "dpmsolver-sde": 50, "unipc": 50, "euler": 100,
         "euler-a": 100, "heun": 50}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_sampler_draws_the_gaussian(name):
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    pipe = DDPMHFPipeline(unet=gaussian_unet(ours), scheduler=make_scheduler(name, ours.config))
    mean, var, se_mean, se_var = moments(sample(pipe, STEPS[name]))
    true_mean, true_var = clipped_truth()
    assert abs(mean - true_mean) < 4 * se_mean + 0.01, (name, mean, true_mean)
    assert abs(var - true_var) < 4 * se_var + 0.01, (name, var, true_var)


def chain_moments(scheduler, variance):
    """The exact mean and variance of x_0 after an ancestral chain over ``scheduler.timesteps`` with the optimal mean
    for N(MU, S^2) data: each step is x_s = a_t x0_hat(x_t) + b_t x_t + sigma z (Ho eq. 7), affine in x_t since
    x0_hat = MU + sqrt(ab_t) S^2 / (ab_t S^2 + 1 - ab_t) (x_t - sqrt(ab_t) MU), so the moments propagate exactly.
    ``variance(ab_t, ab_s)`` gives sigma^2 of the step (not used at the last step, which adds no noise)."""
    abar = scheduler.alphas_cumprod.double()
    steps = [int(t) for t in scheduler.timesteps]
    mean, var = 0.0, 1.0  # x_T ~ N(0, I)
    for k, t in enumerate(steps):
        ab_t = float(abar[t])
        ab_s = float(abar[steps[k + 1]]) if k + 1 < len(steps) else 1.0
        beta = 1 - ab_t / ab_s
        a, b = ab_s**0.5 * beta / (1 - ab_t), (ab_t / ab_s) ** 0.5 * (1 - ab_s) / (1 - ab_t)
        gain = ab_t**0.5 * S**2 / (ab_t * S**2 + 1 - ab_t)  # d x0_hat / d x_t
        slope, offset = a * gain + b, a * (MU - gain * ab_t**0.5 * MU)
        mean, var = slope * mean + offset, slope**2 * var + (variance(ab_t, ab_s) if k + 1 < len(steps) else 0.0)
    return mean, var


def exact_reverse_variance(ab_t, ab_s):
    """sigma^2 of the true q(x_s | x_t) for N(MU, S^2) data: the posterior variance betatilde plus a_t^2 Var[x_0 |
    x_t] (the spread of x_0 the mean cannot know)."""
    beta = 1 - ab_t / ab_s
    a = ab_s**0.5 * beta / (1 - ab_t)
    return (1 - ab_s) / (1 - ab_t) * beta + a**2 * S**2 * (1 - ab_t) / (ab_t * S**2 + 1 - ab_t)


def clipped(mean, var, n=400_000):
    x = (mean + var**0.5 * torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    return x.clamp(-1, 1).mean().item(), x.clamp(-1, 1).var().item()


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_ancestral_chain_of_10_steps_has_its_exact_moments(variance_type):
    """Ten respaced ancestral steps, where the variance choice matters: the samples' moments equal the chain's exact
    ones (``chain_moments``) for betatilde (fixed_small), beta (fixed_large) and, as a learned-range model's choice,
    the true reverse variance (``exact_reverse_variance``: then every x_t has its true marginal, up to the last step,
    which adds no noise as Ho's Algorithm 2 says)."""
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, variance_type=variance_type,
                           timestep_spacing="trailing")  # the chain starts at t = T - 1, where x_t is about N(0, I)
    unet = gaussian_unet(ours, learned=variance_type == "learned_range")
    pipe = DDPMHFPipeline(unet=unet, scheduler=ours)
    ours.set_timesteps(10)
    chain = [int(t) for t in ours.timesteps]
    if variance_type == "learned_range":  # v in [-1, 1] that learned_range maps to the exact variance of each step
        unet.previous = {t: (chain[k + 1] if k + 1 < len(chain) else -1) for k, t in enumerate(chain)}
    images = sample(pipe, 10)
    variance = {"fixed_small": lambda ab_t, ab_s: (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s),
                "fixed_large": lambda ab_t, ab_s: 1 - ab_t / ab_s,
                "learned_range": exact_reverse_variance}[variance_type]
    want = clipped(*chain_moments(ours, variance))
    mean, var, se_mean, se_var = moments(images)
    assert abs(mean - want[0]) < 4 * se_mean and abs(var - want[1]) < 4 * se_var, (mean, var, want)
    # the test tells the variances apart: every other choice predicts a variance more than 8 standard errors away
    others = {"fixed_small": lambda ab_t, ab_s: (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s),
              "fixed_large": lambda ab_t, ab_s: 1 - ab_t / ab_s, "learned_range": exact_reverse_variance}
    for name, other in others.items():
        if name != variance_type:
            assert abs(clipped(*chain_moments(ours, other))[1] - want[1]) > 8 * se_var, name



@pytest.mark.parametrize("name", ["ddpm", "dpmsolver++"])
def test_guidance_between_two_gaussian_classes(name):
    """Class means -0.4 and +0.4: scale 1 draws class c's Gaussian (mean mu_c), scale 0 the null class (the
    mixture: mean 0, variance s^2 + 0.4^2); the labels reach the model in the order given."""
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    means = (-0.4, 0.4)
    unet = gaussian_unet(ours, means=means, conditional=True)
    pipe = DDPMHFPipeline(unet=unet, scheduler=make_scheduler(name, ours.config), null_class_id=2)
    labels = [0] * (N // 2) + [1] * (N // 2)
    out = sample(pipe, STEPS[name], class_labels=labels, guidance_scale=1.0) * 2 - 1
    for c, half in enumerate((out[: N // 2], out[N // 2 :])):
        truth = clipped_truth(means[c])
        assert abs(half.mean().item() - truth[0]) < 4 * S / math.sqrt(half.numel()) + 0.01, (c, half.mean())
        assert abs(half.var().item() - truth[1]) < 4 * S**2 * math.sqrt(2 / half.numel()) + 0.01
    mixed = sample(pipe, STEPS[name], class_labels=[0] * N, guidance_scale=0.0) * 2 - 1
    truth = (torch.cat([means[0] + S * torch.randn(200_000, generator=torch.Generator().manual_seed(2)),
                        means[1] + S * torch.randn(200_000, generator=torch.Generator().manual_seed(3))]).clamp(-1, 1))
    assert abs(mixed.mean().item() - truth.mean().item()) < 4 * 0.65 / math.sqrt(mixed.numel()) + 0.01
    assert abs(mixed.var().item() - truth.var().item()) < 0.02, (mixed.var(), truth.var())


@pytest.mark.parametrize("name", ["ddpm", "dpmsolver++"])
def test_guidance_above_one_is_the_extrapolated_gaussian(name):
    """With class 0 ~ N(m_c, s^2) and the null class N(m_u, s^2), the optimal eps is linear in the mean, so the guided
    eps_u + w (eps_c - eps_u) (Ho & Salimans 2022 eq. 6, diffusers' convention) is the optimal eps of
    N(m_u + w (m_c - m_u), s^2): at w = 2.5 the samples' mean is that extrapolation (a w^2 or a (1 + w) formula lands
    0.75 or 0.2 away)."""
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    m_c, m_u, w = 0.1, -0.1, 2.5
    unet = gaussian_unet(ours, means=(m_c,), conditional=True, null_mean=m_u)
    pipe = DDPMHFPipeline(unet=unet, scheduler=make_scheduler(name, ours.config), null_class_id=1)
    out = sample(pipe, STEPS[name], class_labels=[0] * N, guidance_scale=w) * 2 - 1
    truth = clipped_truth(m_u + w * (m_c - m_u))
    assert abs(out.mean().item() - truth[0]) < 4 * S / math.sqrt(out.numel()) + 0.01, (out.mean(), truth)
    assert abs(out.var().item() - truth[1]) < 4 * S**2 * math.sqrt(2 / out.numel()) + 0.01, (out.var(), truth)


def test_img2img_from_the_data_keeps_the_gaussian():
    """SDEdit from data images at strength 0.6 (forward-noised to t0, then the reverse chain): the result is still
    N(mu, s^2) when the model is the data's optimal one."""
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    pipe = DDPMHFImg2ImgPipeline(unet=gaussian_unet(ours), scheduler=ours)
    pipe.set_progress_bar_config(disable=True)
    data = (MU + S * torch.randn(N, 1, 4, 4, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    out = pipe((data + 1) / 2, strength=0.6, num_inference_steps=250, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    mean, var, se_mean, se_var = moments(out)
    true_mean, true_var = clipped_truth()
    assert abs(mean - true_mean) < 4 * se_mean + 0.01 and abs(var - true_var) < 4 * se_var + 0.01, (mean, var)

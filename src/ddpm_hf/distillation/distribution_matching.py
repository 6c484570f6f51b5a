"""Distribution matching distillation (Yin et al. CVPR 2024, "One-step diffusion with distribution matching
distillation", DMD; Yin et al. NeurIPS 2024, "Improved distribution matching distillation", DMD2) as a refinement of
a progressive student: the student's K-step deterministic sampler is a generator x = G_theta(z), and instead of
copying its teacher's path it is moved so that the distribution of its samples matches the teacher's.

- The gradient (DMD eq. 7-8): for a sample x, a timestep t ~ U[t_min, t_max] and x_t ~ q(x_t | x) (Ho eq. 4), the
  KL gradient is E[w_t (s_fake(x_t) - s_real(x_t))] with s the scores of the teacher ("real") and of a second
  diffusion model trained on the student's own samples ("fake"). With x0 predictions mu, s(x_t) = -(x_t - sqrt(
  alphabar_t) mu) / (1 - alphabar_t), and DMD's weight w_t = (1 - alphabar_t) / sqrt(alphabar_t) * CS / ||mu_real -
  x||_1 turns it into ``distribution_matching_gradient``: (mu_fake - mu_real) / mean|x - mu_real|, per image.
- The generator's loss 0.5 ||x - sg(x - grad)||^2 has the gradient ``grad`` with respect to x; it reaches the
  student's weights through its whole K-step sampler (``student_sample``).
- The fake score (DMD sec. 3.3): the teacher's UNet, trained with the DDPM loss (Ho eq. 14) on the student's samples
  (detached), ``fake_updates`` times per student step (DMD2's two time-scale update rule, sec. 4.1, which replaces
  DMD's regression loss).

The student keeps its sampler: diffusers' DDIMScheduler, "trailing" spacing, K steps (``progressive.step_grid``).
"""

import torch

# DMD2 (its ImageNet configuration) draws the matching timesteps from [0.02 T, 0.98 T]: the ends, where the teacher's
# and the fake model's x0 agree or carry no information, are left out.
T_RANGE = (0.02, 0.98)


def distribution_matching_gradient(x, x0_real, x0_fake):
    """The DMD gradient of the student's samples x (DMD eq. 7 with its weight eq. 8, DMD2's normalisation):
    (x0_fake - x0_real) / mean(|x - x0_real|) per image, zero where that mean is zero.

    Args:
        x: (B, C, H, W) the student's samples. x0_real, x0_fake: (B, C, H, W) the teacher's and the fake model's
            x0 predictions at x_t ~ q(x_t | x).
    Returns:
        (B, C, H, W), the gradient of the KL divergence between the student's and the teacher's distributions
        with respect to x (up to a positive factor per image).
    """
    scale = (x - x0_real).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return torch.nan_to_num((x0_fake - x0_real) / scale)


def distribution_matching_loss(x, gradient):
    """0.5 mean((x - sg(x - gradient))^2): a scalar whose gradient with respect to x is ``gradient`` / x.numel()."""
    return 0.5 * (x.float() - (x - gradient).detach().float()).pow(2).mean()


def student_sample(unet, scheduler, z, grid, class_labels=None):
    """The progressive student's K-step deterministic DDIM sampler (its pipeline's, Song et al. 2021 eq. 12), with
    the graph of every step: x_{s} = DDIM(x_t, v_theta(x_t, t)) on ``grid``, the clean image after the last step.

    Args:
        unet: the student (v prediction, ``scheduler``'s prediction type). scheduler: a DDPMHFScheduler.
        z: (B, C, H, W) standard normal noise, x_T. grid: (t, middle, s) of ``progressive.step_grid``.
    Returns:
        x_0, (B, C, H, W) (unclipped, as the student's pipeline samples before its output clamp).
    """
    timesteps, _, prev_timesteps = grid
    x = z
    for t, s in zip(timesteps.tolist(), prev_timesteps.tolist()):
        t_batch = torch.full((z.shape[0],), t, device=z.device)
        x0, eps = scheduler.x0_and_noise(unet(x, t_batch, class_labels=class_labels).sample, x, t_batch)
        x = scheduler.ddim_step(x0, eps, torch.full((z.shape[0],), s, device=z.device))
    return x


def x0_prediction(unet, scheduler, x_t, timesteps):
    """The x0 the teacher's UNet (or the fake model, a copy of it) predicts at x_t: its prediction channels
    (``denoise``: learned variance channels dropped) read with ``scheduler``'s prediction type (Ho eq. 15 for
    epsilon), unclipped."""
    from ..pipeline_ddpm_hf_denoiser import denoise

    return scheduler.x0_and_noise(denoise(unet, x_t, timesteps), x_t, timesteps)[0]


def fake_score_loss(fake, scheduler, x, timesteps, noise):
    """The fake model's DDPM loss on the student's samples x (detached): the mean squared error of its prediction
    at x_t ~ q(x_t | x) against ``losses.training_target`` of ``scheduler``'s prediction type (the noise: Ho eq. 14,
    the simple loss), a scalar with the fake model's graph."""
    from ..losses import training_target
    from ..pipeline_ddpm_hf_denoiser import denoise

    x = x.detach()
    x_t = scheduler.q_sample(x, noise, timesteps)
    target = training_target(scheduler, x, noise, timesteps)
    return (denoise(fake, x_t, timesteps).float() - target.float()).pow(2).mean()


class FakeScore:
    """The fake model and its optimizer, saved in checkpoints through ``accelerator.register_for_checkpointing``
    (``state_dict`` / ``load_state_dict``), so that a resumed run is bit-identical."""

    def __init__(self, unet, learning_rate, betas):
        self.unet = unet
        self.optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, betas=betas, weight_decay=0.0)

    def state_dict(self):
        unet = getattr(self.unet, "module", self.unet)
        return {"unet": unet.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        getattr(self.unet, "module", self.unet).load_state_dict(state["unet"])
        self.optimizer.load_state_dict(state["optimizer"])

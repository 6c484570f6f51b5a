"""Progressive distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling of diffusion models",
Algorithm 2) in the DDPM's discrete time: rounds that each halve the sampler's steps. In a round the student samples
with K deterministic DDIM steps (Song et al. 2021 eq. 12) and learns to land, in one step, where its teacher lands
with two steps of the 2K-step sampler; the round's student is the next round's teacher.

- The grids (``step_grid``): the K-step sampler's timesteps are diffusers' DDIMScheduler "trailing" spacing,
  t_n = round(T - n T / K) - 1 for n = 0..K-1, each stepping to t - T / K (-1: the clean image), so that the
  student's pipeline (DDIMScheduler, timestep_spacing="trailing") samples on exactly the training grid; the
  teacher's intermediate point is the 2K-step grid's point between t and t - T / K.
- The teacher's two steps (``two_teacher_steps``): in the first round the trained DDPM with its best deterministic
  solver (DPM-Solver++(2S) by default, ``consistency.teacher_ode_step``, its x_0 clipped as its sampler clips, with
  classifier-free guidance for a conditional teacher); in later rounds the previous student's unclipped DDIM steps,
  as its pipeline samples.
- The target (Algorithm 2): x0_tilde, the clean image whose single DDIM step from x_t lands on the teacher's x_s
  (``DDPMHFScheduler.ddim_x0_between``), read as the v-prediction target v_tilde = sqrt(alphabar_t) eps_tilde -
  sqrt(1 - alphabar_t) x0_tilde (``progressive_target``); the loss ||v_theta - v_tilde||^2 is the "SNR+1"
  weighting of the x-loss (Salimans & Ho sec. 4: ||x - x_hat||^2 = (1 - alphabar_t) ||v - v_hat||^2), finite at
  every t, where the epsilon weighting vanishes at t = T.
"""

import numpy as np
import torch

from .consistency import teacher_ode_step


def halving_rounds(num_teacher_steps, num_student_steps):
    """The student's steps in each round: N/2, N/4, ..., K for a first teacher of N steps and a final student of
    K; ValueError unless N = K 2^r with r >= 1."""
    rounds, steps = [], num_teacher_steps
    while steps > num_student_steps and steps % 2 == 0:
        steps //= 2
        rounds.append(steps)
    if not rounds or steps != num_student_steps:
        raise ValueError(f"progressive distillation halves the steps: the teacher's {num_teacher_steps} must be "
                         f"{num_student_steps} x 2^r, r >= 1")
    return rounds


def round_start(number, max_train_steps, num_rounds):
    """The first optimizer step (0-based) of round ``number``: the steps split evenly over the rounds, the remainder
    in the last."""
    return number * max(1, max_train_steps // num_rounds)


def round_of_step(step, max_train_steps, num_rounds):
    """The round (0-based) an optimizer step (0-based) belongs to (``round_start``)."""
    return min(step // round_start(1, max_train_steps, num_rounds), num_rounds - 1)


def trailing_timesteps(num_steps, num_train_timesteps):
    """diffusers' DDIMScheduler "trailing" timesteps of a ``num_steps``-step sampler, descending, as a long tensor
    (num_steps,): round(T - n T / K) - 1, n = 0..K-1 (``DDIMScheduler.set_timesteps``, numpy's rounding)."""
    return torch.from_numpy(np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps))
                            .astype(np.int64) - 1)


def step_grid(num_steps, num_train_timesteps):
    """(t, middle, s), each a long tensor (K,): the K-step sampler's timesteps t, the 2K-step sampler's point between
    each t and the next, and the next s = t - T / K (-1 after the last). ValueError unless K divides T (DDIMScheduler
    steps from t to t - T // K)."""
    if num_train_timesteps % num_steps:
        raise ValueError(f"a {num_steps}-step student needs T = {num_train_timesteps} to be a multiple of {num_steps}")
    t = trailing_timesteps(num_steps, num_train_timesteps)
    return t, trailing_timesteps(2 * num_steps, num_train_timesteps)[1::2], t - num_train_timesteps // num_steps


@torch.no_grad()
def two_teacher_steps(teacher, scheduler, x_t, timesteps, middle, prev_timesteps, first_round, class_labels=None,
                      guidance_scale=1.0, null_class_id=None, solver="dpm-solver++"):
    """x_s after the teacher's two steps t -> middle -> s (``consistency.teacher_ode_step``): the trained DDPM's
    ``solver`` steps with its clipping and guidance in the ``first_round``, else the previous student's unclipped
    DDIM steps with its labels (its guidance is built in).

    Args:
        teacher: the teacher UNet. scheduler: its DDPMHFScheduler (prediction type, clipping).
        x_t: (B, C, H, W). timesteps, middle, prev_timesteps: (B,), t > middle > s >= -1.
    """
    if first_round:
        options = dict(class_labels=class_labels, guidance_scale=guidance_scale, null_class_id=null_class_id,
                       solver=solver)
    else:
        options = dict(class_labels=class_labels, solver="ddim", clip=False)
    x_m = teacher_ode_step(teacher, scheduler, x_t, timesteps, middle, **options)
    return teacher_ode_step(teacher, scheduler, x_m, middle, prev_timesteps, **options)


def progressive_target(scheduler, x_t, timesteps, x_s, prev_timesteps):
    """The v-prediction target v_tilde at (x_t, t) of a student whose one DDIM step must reach the teacher's x_s at s
    (Salimans & Ho 2022 Algorithm 2: x0_tilde = ``ddim_x0_between``; v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t)
    x0, ``get_velocity``, with eps_tilde the noise x0_tilde implies at x_t, ``x0_and_noise``). Shape of x_t."""
    x0 = scheduler.ddim_x0_between(x_t, timesteps, x_s, prev_timesteps)
    _, eps = scheduler.x0_and_noise(x0, x_t, timesteps, prediction_type="sample")
    return scheduler.get_velocity(x0, eps, timesteps)

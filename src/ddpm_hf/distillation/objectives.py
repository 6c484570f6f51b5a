"""The loss of one distillation step, per method, for the loop (``loop.distill``): ``Consistency`` (Song et al. 2023
Algorithm 2, ``consistency``), ``Progressive`` (Salimans & Ho 2022 Algorithm 2, ``progressive``) and
``DistributionMatching`` (Yin et al. 2024 DMD / DMD2, ``distribution_matching``). Each draws its
timesteps and noise from the step's generator (so a resumed run is bit-identical) and says when a round ends."""

import os

import torch

from ..errors import RunError
from ..training.flat_parameters import ema_weights
from . import distribution_matching as dm
from .consistency import consistency_function, pseudo_huber, skip_timesteps, teacher_ode_step
from .progressive import (halving_rounds, progressive_target, round_of_step, round_start, step_grid,
                          two_teacher_steps)

ROUNDS_DIR = "rounds"  # progressive distillation: each round's student pipeline in rounds/K-step/
NULL_FRACTION = 0.1  # a conditional student's images distilled from the teacher's unconditional branch (p_uncond)


def round_folder(output_dir, student_steps):
    """Where progressive distillation saves the pipeline of its round whose student samples in ``student_steps``."""
    return os.path.join(output_dir, ROUNDS_DIR, f"{student_steps}-step")


class _Objective:
    def __init__(self, config, teacher, scheduler, guidance_scales, null_class_id, autocast):
        self.config, self.teacher, self.scheduler = config, teacher, scheduler
        self.scales, self.null_class_id = guidance_scales, null_class_id
        self.autocast = autocast

    def _conditioning(self, labels, generator):
        """(the student's class ids, the teacher's guidance keywords) of a batch: for a conditional teacher a
        guidance scale per image drawn from the student's scales (index j), the teacher's ODE guided with it and the
        student told by the id c M + j (``guided_class_ids``); a fraction ``NULL_FRACTION`` of the labels replaced by
        the null class first (``conditioning.drop_labels``), whose teacher output is its unconditional branch alone
        (guidance leaves eps(x, null) unchanged) and whose student id is the null id K M, so that the student samples
        unconditionally too; (None, unguided) for an unconditional teacher."""
        if labels is None:
            return None, {}
        from ..conditioning import drop_labels

        labels = drop_labels(labels, self.null_class_id, NULL_FRACTION, generator)
        index = torch.randint(0, len(self.scales), labels.shape, generator=generator).to(labels.device)
        scales = torch.tensor(self.scales, dtype=torch.float64)[index.cpu()].to(labels.device)
        null = labels == self.null_class_id
        ids = torch.where(null, labels * len(self.scales), labels * len(self.scales) + index)
        return ids, dict(class_labels=labels, guidance_scale=scales, null_class_id=self.null_class_id)

    def register(self, accelerator):
        """Before the run resumes: the objective's own trained state, registered for checkpoints (none here)."""

    def record(self):
        """The objective's own numbers of the last step for history.jsonl (none here)."""
        return {}

    def trained_models(self):
        """The objective's own trained modules (checked identical across ranks at the end; none here)."""
        return []

    def start(self, step, student, flat, ema):
        """Before optimizer step ``step`` (0-based; also on resume)."""

    def round_ends(self, step):
        """Whether a round ends after ``step`` optimizer steps."""
        return False

    def _draw(self, x0, grid, generator):
        """(index into ``grid`` (B,), noise of x0's shape) from ``generator``, on x0's device."""
        index = torch.randint(0, len(grid), (x0.shape[0],), generator=generator)
        return index, torch.randn(x0.shape, generator=generator).to(x0.device)


class Consistency(_Objective):
    """d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x_hat_{t_n}, t_n)) on LCM's grid (``consistency``)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.grid = skip_timesteps(self.scheduler.config.num_train_timesteps, self.config.num_teacher_steps)
        self.gap = int(self.grid[0]) + 1  # k = T // N: t_n = t_{n+1} - k

    def start(self, step, student, flat, ema):
        self.student, self.flat, self.ema = student, flat, ema

    def loss(self, unet, x0, labels, generator, step):
        """The batch's mean pseudo-Huber consistency loss (a scalar with the student's graph)."""
        index, noise = self._draw(x0, self.grid, generator)
        t = self.grid[index].to(x0.device)
        ids, guidance = self._conditioning(labels, generator)
        x_t = self.scheduler.q_sample(x0, noise, t)  # Ho eq. 4
        x_s = teacher_ode_step(self.teacher.unet, self.teacher.scheduler, x_t, t, t - self.gap,
                               solver=self.config.teacher_solver, **guidance)
        with torch.no_grad(), ema_weights(self.student, self.flat, self.ema) as target:  # f_theta-(x_hat_t_n, t_n)
            aim = consistency_function(target, self.scheduler, x_s, t - self.gap, ids)
        unet.train()
        with self.autocast():
            prediction = consistency_function(unet, self.scheduler, x_t, t, ids)
        return pseudo_huber(prediction.float(), aim.float()).mean()


class Progressive(_Objective):
    """||v_theta(x_t, t) - v_tilde||^2 towards the round's teacher's two steps (``progressive``), in rounds that
    halve the student's steps: num_teacher_steps / 2, ..., num_student_steps."""

    def __init__(self, *args):
        super().__init__(*args)
        self.rounds = halving_rounds(self.config.num_teacher_steps, self.config.num_student_steps)
        self.max_steps = self.config.student.max_train_steps
        self.round = None

    def student_steps(self, step):
        """K, the steps of the student trained at optimizer step ``step`` (0-based)."""
        return self.rounds[round_of_step(step, self.max_steps, len(self.rounds))]

    def round_ends(self, step):
        return step == self.max_steps or round_of_step(step, self.max_steps, len(self.rounds)) != round_of_step(
            step - 1, self.max_steps, len(self.rounds))

    def start(self, step, student, flat, ema):
        """Set up the round of ``step``: its grid and its teacher (the trained DDPM in round 0, else the previous
        round's student, its EMA weights, read back from rounds/); at a later round's first step the student's raw
        weights become its teacher's (Salimans & Ho Algorithm 2: the student starts as a copy of the teacher), which
        the EMA already holds."""
        if step >= self.max_steps:
            return
        number = round_of_step(step, self.max_steps, len(self.rounds))
        if number == self.round:
            return
        self.round = number
        T = self.scheduler.config.num_train_timesteps
        self.grid = step_grid(self.rounds[number], T)
        if number == 0:
            self.unet, self.teacher_scheduler = self.teacher.unet, self.teacher.scheduler
        else:
            from diffusers import UNet2DModel

            folder = round_folder(self.config.student.output_dir, self.rounds[number - 1])
            if not os.path.isfile(os.path.join(folder, "unet", "config.json")):
                raise RunError("step {step} is in round {round} of progressive distillation, whose teacher is the "
                               "previous round's student in {folder}, which is missing: resume in the folder of the "
                               "run that wrote the checkpoint (every machine of a multi-node run reads it there: a "
                               "shared filesystem)", step=step + 1, round=number + 1,
                               folder=os.path.join(ROUNDS_DIR, f"{self.rounds[number - 1]}-step"))
            self.unet = UNet2DModel.from_pretrained(os.path.join(folder, "unet")).requires_grad_(False).eval()
            self.unet.to(flat.device)
            self.teacher_scheduler = self.scheduler
        if step == round_start(number, self.max_steps, len(self.rounds)) and number > 0:  # Algorithm 2: the student starts as a copy of its teacher
            with torch.no_grad():
                flat.copy_(ema.shadow_params[0])

    def loss(self, unet, x0, labels, generator, step):
        """The batch's mean squared v error against the two-step target (a scalar with the student's graph)."""
        index, noise = self._draw(x0, self.grid[0], generator)
        t, middle, s = (g[index].to(x0.device) for g in self.grid)
        ids, guidance = self._conditioning(labels, generator)
        x_t = self.scheduler.q_sample(x0, noise, t)  # Ho eq. 4
        if self.round > 0:  # the previous student: the same ids, its guidance built in
            guidance = dict(class_labels=ids)
        x_s = two_teacher_steps(self.unet, self.teacher_scheduler, x_t, t, middle, s, self.round == 0,
                                solver=self.config.teacher_solver, **guidance)
        target = progressive_target(self.scheduler, x_t, t, x_s, s)
        unet.train()
        with self.autocast():
            prediction = unet(x_t, t, class_labels=ids).sample
        return (prediction.float() - target.float()).pow(2).mean()


class DistributionMatching(_Objective):
    """Distribution matching (``distribution_matching``) of a progressive student's K-step sampler: per step,
    ``fake_updates`` DDPM-loss updates of the fake model on the student's samples, then the student's DMD loss."""

    def __init__(self, *args):
        super().__init__(*args)
        T = self.scheduler.config.num_train_timesteps
        self.grid = step_grid(self.config.num_student_steps, T)
        self.t_range = (int(dm.T_RANGE[0] * T), min(int(dm.T_RANGE[1] * T), T - 1))  # [20, 980] for T = 1000

    def register(self, accelerator):
        """The fake model (a trainable copy of the teacher's UNet, DMD sec. 3.3) and its optimizer, registered for
        checkpoints; before the run resumes."""
        import copy

        fake = copy.deepcopy(self.teacher.unet).requires_grad_(True).train().to(accelerator.device)
        if accelerator.num_processes > 1:
            fake = accelerator.prepare_model(fake)
        self.fake = dm.FakeScore(fake, self.config.fake_learning_rate,
                                 (self.config.student.adam_beta1, self.config.student.adam_beta2))
        accelerator.register_for_checkpointing(self.fake)

    def loss(self, unet, x0, labels, generator, step):
        """The student's DMD loss (a scalar with the student's graph through its K steps); the fake model's updates
        happen here, on the same samples (detached)."""
        z = torch.randn(x0.shape, generator=generator).to(x0.device)
        unet.train()
        with self.autocast():
            x = dm.student_sample(unet, self.scheduler, z, self.grid)
        fake = self.fake.unet
        for _ in range(self.config.fake_updates):  # DMD2's two time-scale rule: the fake model keeps up
            t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x.shape[0],), generator=generator)
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            with self.autocast():
                fake_loss = dm.fake_score_loss(fake, self.teacher.scheduler, x, t.to(x.device), noise)
            self.fake.optimizer.zero_grad(set_to_none=True)
            fake_loss.backward()
            torch.nn.utils.clip_grad_norm_(fake.parameters(), self.config.student.max_grad_norm)
            self.fake.optimizer.step()
        self.fake_loss = fake_loss.item()
        t = torch.randint(self.t_range[0], self.t_range[1] + 1, (x.shape[0],), generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        with torch.no_grad(), self.autocast():
            x_t = self.scheduler.q_sample(x.detach(), noise, t)  # Ho eq. 4
            real = dm.x0_prediction(self.teacher.unet, self.teacher.scheduler, x_t, t)
            fake.eval()
            mine = dm.x0_prediction(fake, self.teacher.scheduler, x_t, t)
            fake.train()
            gradient = dm.distribution_matching_gradient(x.detach().float(), real.float(), mine.float())
        return dm.distribution_matching_loss(x, gradient)

    def record(self):
        return {"fake_loss": self.fake_loss}

    def trained_models(self):
        return [self.fake.unet]


OBJECTIVES = {"consistency": Consistency, "progressive": Progressive, "distribution_matching": DistributionMatching}

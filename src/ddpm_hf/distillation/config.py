"""``DistillConfig``: a distillation run's settings. The student's training settings are a ``TrainConfig`` (the same
flags and meaning as ``ddpm-hf train``, so the run's folder, checkpoints, resume, EMA, accelerate and records work
as a training run's), built from the teacher's own training_args.json (its data, resolution, schedule) with the
distillation's defaults and the user's flags on top; the method's own settings sit beside it."""

import json
import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..training.config import TrainConfig

# The default first (BENCHMARKS.md "Distillation": on the `make demo` teacher, progressive distillation's 1-, 2- and
# 4-step students beat the consistency students at every count of UNet calls, in less time, and distribution
# matching of a progressive student beats both: 1.01x / 1.08x / 1.30x the teacher's chain at 4 / 2 / 1 calls against
# progressive's 1.18x / 1.37x / 1.72x). Without --init_student, distribution matching runs progressive distillation
# to its K steps first, in OUTPUT_DIR/progressive (``PROGRESSIVE_FOLDER``); class-conditional teachers, which it does
# not take, get progressive distillation by default.
METHODS = ("distribution_matching", "progressive", "consistency")
PROGRESSIVE_FOLDER = "progressive"
REFINED_STUDENT_STEPS = 4  # distribution matching's default K: the 4-call student, within 1.01x of the chain
DEFAULT_TEACHER_STEPS = {"progressive": 16,  # the first teacher's steps: rounds of 8, 4, 2, 1 student steps
                         "consistency": 10}  # the grid (LCM's original_inference_steps; LCM itself uses 50): measured
# A class-conditional student's guidance scales (its guidance as an input, ``guided_class_ids``), with the teacher's
# default added: the range where the digits teacher's samples are the requested digit and look like digits.
DEFAULT_GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0)
SOLVERS = ("dpm-solver++", "ddim")  # the teacher's ODE step between grid points (consistency.teacher_ode_step)
# The distillation defaults of the student's TrainConfig, measured on the `make demo` teacher (BENCHMARKS.md,
# "Distillation"): for both methods lr 3e-4 beat 1e-4 and 1e-3 (and, for consistency, a 10-point grid); the EMA is the
# consistency target f_theta- (Song et al. 2023 Algorithm 2, mu = 0.95 as LCM) and progressive distillation's saved
# weights (0.95 beat 0.99); its weights are the ones saved.
STUDENT_DEFAULTS = dict(max_train_steps=1200, train_batch_size=128, learning_rate=3e-4, lr_scheduler="constant",
                        lr_warmup_steps=0, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0, max_grad_norm=1.0,
                        use_ema=True, ema_max_decay=0.95, prediction_type="v_prediction", variance_type="fixed_small",
                        vlb_weight=0.001, snr_gamma=None, num_sample_images=64, checkpointing_steps=500,
                        eval_metrics=(), eval_steps=None, save_images_epochs=None, save_model_epochs=None)
# Distribution matching refines a progressive student (--init_student) with DMD2's Adam beta1 0 and a small learning
# rate; 100 steps: on the digits 4-step student 1.01x the teacher's chain against 0.99x at 200 steps, in half the
# time (BENCHMARKS.md "Distribution matching of the progressive students"); 2 fake updates instead of 5: 1.03x.
# Steps per halving round of distribution matching's progressive phase: the default progressive run's (1,200 steps
# over its 4 rounds, 16 -> 1), so that phase's students are that run's rounds.
PROGRESSIVE_ROUND_STEPS = STUDENT_DEFAULTS["max_train_steps"] // 4
METHOD_DEFAULTS = {"distribution_matching": dict(max_train_steps=100, learning_rate=2e-5, adam_beta1=0.0)}
FAKE_LEARNING_RATE = 1e-4  # the fake model's (DMD sec. 3.3), 5x the student's as in the measured runs
FAKE_UPDATES = 5  # fake-model updates per student step (DMD2 sec. 4.1, two time-scale update rule; DMD2 used 5)
# The teacher's training settings the student keeps: what the data is and how it is read, the UNet and the schedule.
FROM_TEACHER = ("dataset_name", "dataset_config_name", "train_data_dir", "cache_dir", "split", "eval_split",
                "image_column", "strict", "streaming", "shuffle_buffer_size", "resolution", "center_crop", "random_flip",
                "channels", "class_conditional", "label_column", "unet_preset", "ddpm_num_steps", "ddpm_beta_schedule",
                "cosine_logsnr_shift", "eval_batch_size", "mixed_precision", "recipe")
FLAGS = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "seed", "max_train_steps",
         "train_batch_size", "learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2",
         "adam_weight_decay", "adam_epsilon", "max_grad_norm", "ema_max_decay", "mixed_precision", "dynamo_backend",
         "checkpointing_steps", "checkpoints_total_limit", "logger", "logging_dir", "num_sample_images",
         "eval_batch_size", "dataloader_num_workers", "ddp_timeout", "cache_dir", "dataset_name", "train_data_dir")


@dataclass(frozen=True)
class DistillConfig:
    """The settings of one distillation run.

    Args:
        teacher: the teacher's folder (a ``ddpm-hf train`` run or a saved pipeline) or Hub repo id.
        student: the student's TrainConfig (output_dir, steps, batch, optimizer, EMA: the consistency target, or the
            saved weights of each progressive round, restarted at each round, ...).
        method: "progressive" (Salimans & Ho 2022 progressive distillation, ``progressive``) or "consistency" (Song
            et al. 2023 consistency distillation, LCM's discrete-time form, ``consistency``).
        num_teacher_steps: N. progressive: the first round's teacher sampler's steps, halved each round down to
            ``num_student_steps``; consistency: the points of the teacher's ODE grid (LCM's
            ``original_inference_steps``), the teacher steps from t to t - T // N and the student samples with at
            most N calls (default ``DEFAULT_TEACHER_STEPS`` of the method).
        num_student_steps: progressive: the last round's student's steps K (N = K 2^r; default 1).
        teacher_guidance_scale: a class-conditional teacher's guidance scale w: the student's default (default: the
            teacher's own).
        guidance_scales: a class-conditional student's guidance scales, an input of the student (each class at each
            scale its own class-embedding id, the teacher's ODE guided with that scale); None:
            ``DEFAULT_GUIDANCE_SCALES`` and the default w.
        teacher_solver: the teacher's ODE step, "dpm-solver++" (two calls) or "ddim" (one) (``SOLVERS``).
        init_student: distribution_matching: the progressive student it refines (a pipeline folder of
            ``ddpm-hf distill``: rounds/K-step, or the output of a run); its K steps are ``num_student_steps``.
        progressive: distribution_matching without a student given: the config of the progressive run that makes it
            first, into output_dir/progressive (``init_student``), or None.
        fake_learning_rate, fake_updates: distribution_matching: the fake model's learning rate and its updates per
            student step.
    """

    teacher: str
    student: TrainConfig
    method: str = "progressive"
    num_teacher_steps: int = DEFAULT_TEACHER_STEPS["progressive"]
    num_student_steps: int = 1
    teacher_guidance_scale: float | None = None
    guidance_scales: tuple | None = None
    teacher_solver: str = "dpm-solver++"
    init_student: str | None = None
    fake_learning_rate: float = FAKE_LEARNING_RATE
    fake_updates: int = FAKE_UPDATES
    progressive: "DistillConfig | None" = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"{{method}} {self.method}: choose from {', '.join(METHODS)}")
        if self.teacher_solver not in SOLVERS:
            raise ConfigError(f"{{teacher_solver}} {self.teacher_solver}: choose from {', '.join(SOLVERS)}")
        steps = self.student.ddpm_num_steps
        if isinstance(self.num_teacher_steps, bool) or not isinstance(self.num_teacher_steps, int) or not (
                2 <= self.num_teacher_steps <= steps):
            raise ConfigError(f"{{num_teacher_steps}} must be an integer in [2, {steps}] (the teacher's T), got "
                              f"{self.num_teacher_steps!r}")
        if self.method == "distribution_matching":
            if self.init_student is None:
                raise ConfigError("{method} distribution_matching refines a progressive student: give its folder "
                                  "with {init_student} (e.g. rounds/4-step of a `ddpm-hf distill` run)")
            if self.student.class_conditional:
                raise ConfigError("{method} distribution_matching takes unconditional teachers only: distil a "
                                  "class-conditional teacher with progressive or consistency")
            if isinstance(self.fake_updates, bool) or not isinstance(self.fake_updates, int) or self.fake_updates < 1:
                raise ConfigError(f"{{fake_updates}} must be an integer >= 1, got {self.fake_updates!r}")
            if not self.fake_learning_rate > 0:
                raise ConfigError(f"{{fake_learning_rate}} must be > 0, got {self.fake_learning_rate!r}")
        elif self.init_student is not None:
            raise ConfigError("{init_student} is distribution_matching's (the student it refines)")
        if self.method not in ("progressive", "distribution_matching") and self.num_student_steps != 1:
            raise ConfigError(f"{{num_student_steps}} is progressive distillation's; {self.method} distillation gives "
                              "one student for 1 to {num_teacher_steps} calls")
        if self.method == "progressive":
            from .progressive import halving_rounds

            try:
                rounds = halving_rounds(self.num_teacher_steps, self.num_student_steps)
            except ValueError as error:
                raise ConfigError(f"{{num_teacher_steps}} {self.num_teacher_steps} and {{num_student_steps}} "
                                  f"{self.num_student_steps}: {error}") from None
            uneven = [k for k in rounds if steps % k]
            if uneven:
                raise ConfigError(f"{{num_teacher_steps}} {self.num_teacher_steps}: a student of {uneven[0]} steps "
                                  f"needs the teacher's T = {steps} to be a multiple of {uneven[0]} (DDIM's grid)")
            if self.student.max_train_steps < len(rounds):
                raise ConfigError(f"{{max_train_steps}} {self.student.max_train_steps}: progressive distillation "
                                  f"needs at least one step in each of its {len(rounds)} rounds")
        for name in ("teacher_guidance_scale", "guidance_scales"):
            if getattr(self, name) is not None and not self.student.class_conditional:
                raise ConfigError(f"{{{name}}} only applies to a class-conditional teacher")
        scales = self.guidance_scales
        if scales is not None and (not scales or min(scales) < 0 or len(set(scales)) < len(scales)):
            raise ConfigError(f"{{guidance_scales}} {' '.join(map(str, scales))}: give distinct scales >= 0")

    @classmethod
    def create(cls, teacher, teacher_args, method=None, num_teacher_steps=None, num_student_steps=None,
               teacher_guidance_scale=None, teacher_solver="dpm-solver++", guidance_scales=None, init_student=None,
               fake_learning_rate=None, fake_updates=None, progressive_round_steps=None, **flags):
        """The config of a run distilling ``teacher`` whose training_args.json is ``teacher_args`` (a dict; {} for a
        pipeline without one: the data flags must then be given). ``method`` None: ``default_method``;
        ``num_teacher_steps`` None: ``default_teacher_steps``; ``num_student_steps`` None: 1 (distribution matching
        ``REFINED_STUDENT_STEPS``). ``flags``: the student's TrainConfig settings (``FLAGS``); None means the default.
        distribution_matching: ``init_student``'s steps are the student's (``progressive_student_steps``); without
        it, ``progressive`` holds the run that makes it (``progressive_phase``: ``progressive_round_steps`` per
        round, default ``PROGRESSIVE_ROUND_STEPS``). Raises ConfigError."""
        unknown = set(flags) - set(FLAGS)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        method = method or default_method(teacher_args)
        if progressive_round_steps is not None and (method != "distribution_matching" or init_student is not None):
            raise ConfigError("{progressive_round_steps} is the progressive phase's of distribution_matching without "
                              "{init_student}")
        progressive = None
        if method == "distribution_matching" and init_student is None:
            progressive = progressive_phase(teacher, teacher_args, num_teacher_steps,
                                            num_student_steps or REFINED_STUDENT_STEPS, teacher_solver,
                                            progressive_round_steps, flags)
            init_student, num_student_steps = progressive.student.output_dir, progressive.num_student_steps
            num_teacher_steps = None
        values = {k: teacher_args[k] for k in FROM_TEACHER if teacher_args.get(k) is not None}
        if flags.get("dataset_name") or flags.get("train_data_dir"):  # the user's data replaces the teacher's
            values.pop("dataset_name", None), values.pop("train_data_dir", None)
        values = {**values, **STUDENT_DEFAULTS, **METHOD_DEFAULTS.get(method, {}),
                  **{k: v for k, v in flags.items() if v is not None}}
        if method == "distribution_matching" and progressive is None:
            steps = progressive_student_steps(init_student)
            if num_student_steps not in (None, steps):
                raise ConfigError(f"{{num_student_steps}} {num_student_steps}: the student in {init_student} samples "
                                  f"in {steps} steps (distribution matching keeps its sampler)")
            num_student_steps = steps
        values.setdefault("output_dir", "outputs/distill")
        student = TrainConfig.create(**values)
        if num_teacher_steps is None:
            num_teacher_steps = default_teacher_steps(method, student.ddpm_num_steps, num_student_steps or 1)
        return cls(teacher=teacher, student=student, method=method, num_teacher_steps=num_teacher_steps,
                   num_student_steps=1 if num_student_steps is None else num_student_steps,
                   teacher_guidance_scale=teacher_guidance_scale, teacher_solver=teacher_solver,
                   guidance_scales=None if guidance_scales is None else tuple(float(w) for w in guidance_scales),
                   init_student=init_student,
                   fake_learning_rate=FAKE_LEARNING_RATE if fake_learning_rate is None else fake_learning_rate,
                   fake_updates=FAKE_UPDATES if fake_updates is None else fake_updates, progressive=progressive)

    def record(self):
        """training_args.json of the run: the student's settings and, under "distillation", the method's."""
        return {**self.student.record(), "distillation": {
            "teacher": self.teacher, "method": self.method, "num_teacher_steps": self.num_teacher_steps,
            "num_student_steps": self.num_student_steps if self.method != "consistency" else None,
            "teacher_guidance_scale": self.teacher_guidance_scale, "teacher_solver": self.teacher_solver,
            "guidance_scales": None if self.guidance_scales is None else list(self.guidance_scales),
            **({"init_student": self.init_student, "fake_learning_rate": self.fake_learning_rate,
                "fake_updates": self.fake_updates, "progressive_phase": self.progressive is not None}
               if self.method == "distribution_matching" else {})}}

    def student_guidance_scales(self, default):
        """The conditional student's guidance scales, sorted: ``guidance_scales``, or ``DEFAULT_GUIDANCE_SCALES``
        with the teacher's ``default`` w, which is added when missing."""
        return sorted({*(self.guidance_scales or DEFAULT_GUIDANCE_SCALES), float(default)})


def default_method(teacher_args):
    """The method of ``ddpm-hf distill`` without --method: distribution_matching (the best measured), or progressive
    for a class-conditional teacher (which distribution matching does not take)."""
    return "progressive" if teacher_args.get("class_conditional") else METHODS[0]


def progressive_phase(teacher, teacher_args, num_teacher_steps, num_student_steps, teacher_solver, round_steps,
                      flags):
    """The progressive run that distribution matching without --init_student makes its student with: into
    output_dir/progressive, from ``num_teacher_steps`` (default: progressive's first teacher, 16 steps, halved to fit
    T) to ``num_student_steps`` K, ``round_steps`` (default ``PROGRESSIVE_ROUND_STEPS``) per round, with the
    progressive defaults (the user's optimisation flags are the refinement's); the run's seed, batch size, data,
    precision, checkpointing and logging flags are shared."""
    from .progressive import halving_rounds

    if num_teacher_steps is None:
        num_teacher_steps = max(default_teacher_steps("progressive", int(teacher_args.get("ddpm_num_steps") or 1000)),
                                2 * num_student_steps)
    try:
        rounds = len(halving_rounds(num_teacher_steps, num_student_steps))
    except (TypeError, ValueError):
        rounds = 1  # the progressive config's own checks below name what is wrong
    if isinstance(round_steps, bool) or not isinstance(round_steps, (int, type(None))) or (round_steps or 1) < 1:
        raise ConfigError(f"{{progressive_round_steps}} must be an integer >= 1, got {round_steps!r}")
    shared = ("overwrite_output_dir", "resume_from_checkpoint", "seed", "train_batch_size", "mixed_precision",
              "dynamo_backend", "checkpointing_steps", "checkpoints_total_limit", "logger", "logging_dir",
              "num_sample_images", "eval_batch_size", "dataloader_num_workers", "ddp_timeout", "cache_dir",
              "dataset_name", "train_data_dir")
    out = flags.get("output_dir") or "outputs/distill"
    return DistillConfig.create(teacher, teacher_args, method="progressive", num_teacher_steps=num_teacher_steps,
                                num_student_steps=num_student_steps, teacher_solver=teacher_solver,
                                output_dir=os.path.join(out, PROGRESSIVE_FOLDER),
                                max_train_steps=(round_steps or PROGRESSIVE_ROUND_STEPS) * rounds,
                                **{k: flags.get(k) for k in shared})


def default_teacher_steps(method, num_train_timesteps, num_student_steps=1):
    """The method's ``DEFAULT_TEACHER_STEPS`` for a teacher of T steps: consistency at most T; progressive halved
    until it is at most T and every round's student's steps (N/2, N/4, ..., K) divide T (DDIM's grid), down to 2 K."""
    if method != "progressive":
        return min(DEFAULT_TEACHER_STEPS.get(method, 2), num_train_timesteps)
    steps = DEFAULT_TEACHER_STEPS[method] * num_student_steps

    def fits(n):
        students = []
        while n > num_student_steps:
            n //= 2
            students.append(n)
        return all(num_train_timesteps % k == 0 for k in students)

    while steps > 2 * num_student_steps and (steps > num_train_timesteps or not fits(steps)):
        steps //= 2
    return steps


def teacher_training_args(teacher, folder):
    """The teacher's training_args.json as a dict ({} when there is none; ``evaluation.model_source.training_args_of``:
    the local ``folder``'s, or the Hub repo ``teacher``'s when ``folder`` is None), with the schedule of a local
    pipeline itself (scheduler/scheduler_config.json: T and the beta schedule), which is what the student distils."""
    from ..evaluation.model_source import training_args_of

    args = dict(training_args_of(teacher, folder))
    scheduler = os.path.join(folder, "scheduler", "scheduler_config.json") if folder else None
    if scheduler and os.path.isfile(scheduler):
        with open(scheduler) as f:
            config = json.load(f)
        args.update({k: config[n] for k, n in (("ddpm_num_steps", "num_train_timesteps"),
                                               ("ddpm_beta_schedule", "beta_schedule")) if n in config})
    return args


def progressive_student_steps(folder):
    """K, the steps of the progressive student pipeline in ``folder`` (its model_index.json's num_inference_steps;
    its scheduler diffusers' DDIMScheduler, "trailing", v prediction, as ``loop.student_pipeline`` saves it).
    ConfigError naming what is wrong otherwise."""
    def read(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ConfigError(f"{{init_student}} {folder}: no {name}: give the folder of a progressive student "
                              "(rounds/K-step of a `ddpm-hf distill` run, or its output)")
        with open(path) as f:
            return json.load(f)

    index, scheduler = read("model_index.json"), read(os.path.join("scheduler", "scheduler_config.json"))
    steps = index.get("num_inference_steps")
    if scheduler.get("_class_name") != "DDIMScheduler" or scheduler.get("timestep_spacing") != "trailing" or \
            scheduler.get("prediction_type") != "v_prediction" or not isinstance(steps, int):
        raise ConfigError(f"{{init_student}} {folder} is not a progressive student (DDIMScheduler, trailing "
                          f"timesteps, v prediction, num_inference_steps in model_index.json): its scheduler is "
                          f"{scheduler.get('_class_name')}")
    return steps

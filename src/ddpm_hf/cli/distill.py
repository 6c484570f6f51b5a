"""``ddpm-hf distill TEACHER``: distil a trained DDPM into a few-step student (ddpm_hf.distillation), with the flags
of ``ddpm-hf train`` for the student's run (output folder, steps, batch, optimizer, EMA, checkpoints, resume)."""

import os
import signal
import sys

from .common import fail


def add_parser(sub):
    from ..distillation.config import (DEFAULT_GUIDANCE_SCALES, DEFAULT_TEACHER_STEPS, FAKE_LEARNING_RATE,
                                       FAKE_UPDATES, METHOD_DEFAULTS, METHODS, PROGRESSIVE_FOLDER,
                                       PROGRESSIVE_ROUND_STEPS, REFINED_STUDENT_STEPS, SOLVERS, STUDENT_DEFAULTS)

    p = sub.add_parser("distill", help="distil a trained model into a student of 1 to 8 UNet calls (default: "
                       "progressive distillation to 4 steps, then distribution matching)",
                       description="Distil TEACHER (a ddpm-hf training run or pipeline folder, or a Hub repo id) into "
                       "a student that samples in a few UNet calls, on the teacher's own training data (from its "
                       "training_args.json; --dataset_name / --train_data_dir otherwise). The student is a pipeline "
                       "folder like the teacher's (DDPMHFPipeline with diffusers' LCMScheduler for consistency, "
                       "DDIMScheduler for progressive distillation and distribution matching), loadable without "
                       "ddpm_hf.")
    a = p.add_argument
    a("teacher", help="the teacher: a `ddpm-hf train` output folder, a saved pipeline folder, or a Hub repo id")
    a("--output_dir", default="outputs/distill", help="where the student and its records go (default "
      "outputs/distill)")
    a("--method", choices=METHODS, default=None,
      help="distribution_matching (default; progressive for a class-conditional teacher): DMD (Yin et al. 2024) "
      "refines a progressive student, its samples' distribution moved to the teacher's instead of its path copied, "
      "same sampler and steps: the student of --init_student, or, without it, one that the same command makes "
      f"first by progressive distillation to --num_student_steps (default {REFINED_STUDENT_STEPS}) in "
      f"OUTPUT_DIR/{PROGRESSIVE_FOLDER}; progressive: progressive distillation (Salimans & Ho 2022), rounds that "
      "halve the steps, each round's student saved in rounds/K-step (DDIMScheduler, K calls), the last also at "
      "--output_dir; consistency: consistency distillation (Song et al. 2023) in LCM's discrete time, one student "
      "that samples with 1 to N calls (LCMScheduler)")
    a("--num_teacher_steps", type=int, default=None,
      help="N. progressive: the first teacher's sampler steps, halved each round (default "
      f"{DEFAULT_TEACHER_STEPS['progressive']} x --num_student_steps: students of 8, 4, 2 and 1 steps; halved while a "
      "student's steps do not divide the teacher's T); consistency: the teacher's ODE grid "
      "(LCM's original_inference_steps), the student samples with at most N calls (default "
      f"{DEFAULT_TEACHER_STEPS['consistency']}); at most the teacher's T")
    a("--num_student_steps", type=int, default=None,
      help="progressive: the last round's student's steps K, N = K x 2^r (default 1); distribution_matching "
      f"without --init_student: the refined student's steps (default {REFINED_STUDENT_STEPS})")
    a("--progressive_round_steps", type=int, default=None,
      help="distribution_matching without --init_student: steps of each halving round of its progressive phase "
      f"(default {PROGRESSIVE_ROUND_STEPS}; its other settings are progressive's defaults: the optimisation flags "
      "below but --train_batch_size are the refinement's)")
    a("--init_student", help="distribution_matching: the progressive student to refine, a pipeline folder of "
      "`ddpm-hf distill` (its rounds/K-step, or its output); the refined student samples in its K steps")
    a("--fake_learning_rate", type=float, default=None,
      help=f"distribution_matching: the learning rate of the fake model (a copy of the teacher trained on the "
      f"student's samples; default {FAKE_LEARNING_RATE})")
    a("--fake_updates", type=int, default=None,
      help=f"distribution_matching: fake-model updates per student step (default {FAKE_UPDATES})")
    a("--teacher_solver", choices=SOLVERS, default="dpm-solver++",
      help="the trained teacher's ODE step: dpm-solver++ (DPM-Solver++(2S), second order, 2 teacher calls; "
      "default) or ddim (first order, 1 call)")
    a("--teacher_guidance_scale", type=float, default=None,
      help="class-conditional teachers: the student's default guidance scale (default: the teacher's own)")
    a("--guidance_scales", type=float, nargs="+", default=None,
      help="class-conditional teachers: the guidance scales the student takes as an input, the teacher's ODE guided "
      f"with each (default {' '.join(map(str, DEFAULT_GUIDANCE_SCALES))} and the default scale)")
    a("--overwrite_output_dir", action="store_true", help="replace a run already in --output_dir")
    a("--resume_from_checkpoint", help='a checkpoint-N folder of --output_dir, or "latest"')
    a("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    for name, kind in (("max_train_steps", int), ("train_batch_size", int), ("learning_rate", float),
                       ("lr_warmup_steps", int), ("adam_beta1", float), ("adam_beta2", float),
                       ("adam_weight_decay", float), ("max_grad_norm", float), ("ema_max_decay", float),
                       ("checkpointing_steps", int), ("num_sample_images", int)):
        dm = METHOD_DEFAULTS["distribution_matching"].get(name)
        a(f"--{name}", type=kind, help=f"as `ddpm-hf train --{name}` (default "
          + (f"{dm} for distribution_matching, {STUDENT_DEFAULTS[name]} for the others" if dm is not None
             else f"{STUDENT_DEFAULTS[name]}")
          + ("; the EMA is the consistency target network, its weights are saved" if name == "ema_max_decay" else "")
          + ")")
    a("--lr_scheduler", help=f"as `ddpm-hf train` (default {STUDENT_DEFAULTS['lr_scheduler']})")
    a("--checkpoints_total_limit", type=int, help="as `ddpm-hf train` (default 2)")
    a("--eval_batch_size", type=int, help="images per forward pass of the sample grids (default: the teacher's)")
    a("--mixed_precision", choices=("no", "fp16", "bf16"), help="as `ddpm-hf train` (default: the teacher's)")
    a("--logger", choices=("tensorboard", "wandb", "none"), help="as `ddpm-hf train` (default tensorboard)")
    a("--logging_dir", help="as `ddpm-hf train` (default logs)")
    a("--dataset_name", help="the data to distil on, when the teacher has no training_args.json")
    a("--train_data_dir", help="a folder of images to distil on, as --dataset_name")
    a("--cache_dir", help="datasets/hub cache directory")
    return p


def config_of(args, parser):
    """The DistillConfig of parsed ``args``; exits with the parser's message on a bad flag or teacher."""
    from ..distillation.config import FLAGS, DistillConfig, teacher_training_args
    from ..errors import ConfigError
    from ..evaluation.model_source import model_folder

    try:
        folder = model_folder(args.teacher)
    except Exception as error:  # noqa: BLE001 - ModelNotFound: a folder without model_index.json
        fail(parser, error)
    teacher_args = teacher_training_args(args.teacher, folder)
    flags = {name: getattr(args, name) for name in FLAGS if hasattr(args, name)}
    try:
        return DistillConfig.create(folder or args.teacher, teacher_args, method=args.method,
                                    num_teacher_steps=args.num_teacher_steps, num_student_steps=args.num_student_steps,
                                    teacher_guidance_scale=args.teacher_guidance_scale,
                                    guidance_scales=args.guidance_scales,
                                    teacher_solver=args.teacher_solver, init_student=args.init_student,
                                    fake_learning_rate=args.fake_learning_rate, fake_updates=args.fake_updates,
                                    progressive_round_steps=args.progressive_round_steps, **flags)
    except ConfigError as error:
        parser.error(error.message(lambda name: f"--{name}"))


def run(args, parser):
    """Distil; print a typed error as one line and exit (2, or 128 + signal)."""
    from ..errors import Interrupted, RunError
    from .common import flag_message
    from .train import resume_command

    config = config_of(args, parser)
    from ..distillation import distill

    try:
        metrics = distill(config)
    except RunError as error:
        print(f"ddpm-hf distill: error: {flag_message(error)}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stopped:
        argv = sys.argv[2:] if sys.argv[1:2] == ["distill"] else sys.argv[1:]
        print(f"ddpm-hf distill: stopped by {signal.Signals(stopped.signum).name}: saved {stopped.checkpoint}. "
              f"Resume with: {resume_command(argv, 'distill')}", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    out, k = config.student.output_dir, metrics["student_steps"]
    first = (f"progressive distillation in {metrics['progressive_seconds']:.0f}s "
             f"({config.progressive.student.output_dir}), then " if metrics.get("progressive_seconds") else "")
    print(f"{first}distilled {metrics['steps']} steps in {metrics['distill_seconds']:.0f}s: the student is in {out} "
          f"(sample it with `ddpm-hf sample {out} --num_inference_steps {k}`; grids in "
          f"{os.path.join(out, f'samples-{k}-step')})")

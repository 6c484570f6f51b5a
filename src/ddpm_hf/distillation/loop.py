"""Distil a trained DDPM into a few-step student (``ddpm-hf distill``). ``distill`` reads top to bottom like the
training loop (ddpm_hf.training.loop), whose run folder, checkpoints, resume, signals, EMA and records it shares:
teacher and data, the student (the teacher's UNet with as many output channels as the image, initialised from the
teacher's weights), optimizer, resume, the loop, the end.

The consistency loop (Song et al. 2023 Algorithm 2 in LCM's discrete time, ``consistency``): for a batch x_0, a grid
point t_{n+1} per image, x_{t_{n+1}} ~ q(x_t | x_0) (Ho eq. 4), the teacher's ODE step to t_n, and the loss
d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x_hat_{t_n}, t_n)) with f_theta- the EMA (the target network, mu =
--ema_max_decay), whose weights the student's pipeline saves. Every draw is seeded by (seed, rank, micro-batch), so a
resumed run is bit-identical to one that never stopped.

The progressive loop (Salimans & Ho 2022 Algorithm 2, ``progressive``): rounds of --max_train_steps / r steps; in
each, for a batch x_0, a timestep t of the round's K-step grid per image, x_t ~ q(x_t | x_0), the round's teacher's
two steps to t - T / K, and the loss ||v_theta(x_t, t) - v_tilde||^2 towards the v whose single DDIM step lands
there. At a round's end its student (the EMA weights) is saved in rounds/K-step/ and becomes the next round's
teacher, and the next student starts from those weights.
"""

import dataclasses
import math
import os
import time

import torch

from .. import __version__
from ..data import prepare_data, step_seed, to_model_range
from ..errors import RunError
from ..run_dir import TRAINING_ARGS, History, read_history, read_metrics, write_json_atomic, write_metrics
from ..training.checkpoints import any_rank
from ..training.flat_parameters import flatten_parameters, view_parameters
from ..training.lifecycle import Run, exit_launched_worker, start_trackers
from ..training.loop import checksum, optimization, step_budget
from .objectives import OBJECTIVES, round_folder


def distill_run(config, last=True, keep=()):
    """Distil ``config.teacher`` into a student with ``config`` (a DistillConfig), then save the student's pipeline
    (the EMA target's weights) at its output_dir with samples, history.jsonl, training_args.json, metrics.json and
    its model card (README.md, ``distillation.card``). ``last``: False for a first phase (``phases.distill``): the
    trackers are closed but the process group stays for the next. ``keep``: names in output_dir that
    --overwrite_output_dir leaves (the first phase's folder).
    Returns the metrics dict. Raises RunError, Interrupted (SIGTERM/SIGINT: a checkpoint of the current step)."""
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    student_config = config.student
    with Run(student_config, keep=keep) as run:
        accelerator, main = run.accelerator, run.main
        rank, world = accelerator.process_index, accelerator.num_processes
        torch.manual_seed(student_config.seed)

        # teacher, data, student
        teacher = load_teacher(config.teacher, accelerator.device)
        if config.method == "distribution_matching" and teacher.unet.config.num_class_embeds is not None:
            raise RunError("the teacher {teacher} is class-conditional: distribution matching takes unconditional "
                           "teachers only; distil it with {method} progressive", teacher=config.teacher)
        with accelerator.main_process_first():
            batches, _, channels, resolution = prepare_data(student_config, rank, world,
                                                            accelerator.is_local_main_process)
        check_teacher_fits(teacher, channels, resolution)
        run.clear_for_overwrite()
        labels_on = student_config.class_conditional
        guidance, scales = student_guidance(teacher, config)
        null_class_id = getattr(teacher.config, "null_class_id", None)
        student = (student_unet(teacher.unet, channels, len(scales) if scales else 1) if config.init_student is None
                   else load_student_unet(config.init_student)).to(accelerator.device)
        flat = flatten_parameters(student)
        student_scheduler = student_noise_scheduler(teacher.scheduler, student_config.prediction_type)

        student_config, steps_per_epoch = step_budget(student_config, batches.per_epoch)
        config = dataclasses.replace(config, student=student_config)
        if main:
            write_json_atomic(os.path.join(student_config.output_dir, TRAINING_ARGS), config.record())
        optimizer, lr_scheduler = optimization(student_config, accelerator, flat)
        unet, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)
        view_parameters(student, flat)
        # the target network f_theta-: an EMA of the student with a fixed decay mu (no warm-up), Song et al. Alg. 2
        ema = EMAModel([flat], decay=student_config.ema_max_decay, min_decay=student_config.ema_max_decay,
                       use_ema_warmup=False, foreach=True)
        run.register(student_config, student, flat, ema, student_scheduler)
        objective = OBJECTIVES[config.method](config, teacher, student_scheduler, scales, null_class_id,
                                              accelerator.autocast)
        objective.register(accelerator)  # its own state in the checkpoints, if any
        start_trackers(student_config, accelerator)
        counters = run.resume()
        step = counters["step"]
        history = History(student_config.output_dir,
                          read_history(student_config.output_dir, step) if run.resume_from else [], main)
        objective.start(step, student, flat, ema)

        # the loop
        progress = tqdm(total=student_config.max_train_steps, initial=step, desc="distilling",
                        disable=not accelerator.is_local_main_process)
        start_time = time.time()
        unet.train()
        run.stop.install()
        while step < student_config.max_train_steps:
            k = step  # one micro-batch per step (no accumulation)
            raw = batches.batch(k)
            labels = batches.labels(k).to(accelerator.device) if labels_on else None
            g = torch.Generator().manual_seed(step_seed(student_config.seed, rank, k))
            x0 = to_model_range(raw, student_config.random_flip, g).to(accelerator.device)
            loss = objective.loss(unet, x0, labels, g, step)
            accelerator.backward(loss)
            grad_norm = torch.nn.utils.clip_grad_norm_([flat], student_config.max_grad_norm, foreach=False) \
                if student_config.max_grad_norm > 0 else torch.linalg.vector_norm(flat.grad)
            bad, signalled = any_rank(accelerator, [not (math.isfinite(loss.item()) and bool(torch.isfinite(grad_norm))),
                                                    run.stop.signum is not None])
            if bad:
                raise RunError("distillation step {step}: the loss is {loss}: stopped before this step changed the "
                               "weights. Start again with a lower {learning_rate}.", step=step + 1,
                               loss=f"{loss.item():.6g}")
            optimizer.step()
            lr_scheduler.step()
            flat.grad.zero_()
            ema.step([flat])
            step += 1
            if objective.round_ends(step):  # progressive: save the round's student, the next round's teacher
                if main:
                    save_round(run, teacher, config, objective.student_steps(step - 1))
                accelerator.wait_for_everyone()
                objective.start(step, student, flat, ema)
            record = {"step": step, "seconds": round(counters["elapsed"] + time.time() - start_time, 3),
                      "loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                      **objective.record()}
            history.append(record)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            accelerator.log({k: v for k, v in record.items() if k not in ("step", "seconds")}, step=step)
            counters = {"step": step, "images_seen": counters["images_seen"] + x0.shape[0] * world,
                        "elapsed": counters["elapsed"] + time.time() - start_time}
            start_time = time.time()
            run.checkpoint_after_step(counters, signalled)
        progress.close()
        accelerator.wait_for_everyone()

        # the end: the student's pipeline (the target network's weights), its samples and records
        import diffusers

        metrics = {"method": config.method, "student_steps": default_student_steps(config), "steps": counters["step"],
                   "images_seen": counters["images_seen"], "distill_seconds": round(counters["elapsed"], 2), "processes": world,
                   "teacher": config.teacher, "teacher_train_seconds": teacher_train_seconds(config.teacher),
                   "teacher_guidance_scale": guidance if labels_on else None, "guidance_scales": scales,
                   "versions": {"ddpm-hf": __version__, "diffusers": diffusers.__version__,
                                "torch": torch.__version__}}
        if world > 1:  # DDP keeps every rank's student (and fake model) the same: checked, as a training run does
            sums = torch.tensor([checksum(m.parameters()) for m in [student, *objective.trained_models()]],
                                dtype=torch.float64, device=accelerator.device)
            gathered = accelerator.gather(sums[None]).view(world, -1).cpu()
            metrics["weights_identical_across_ranks"] = bool((gathered == gathered[0]).all())
        if run.signalled():
            run.checkpoint("signal", counters)
        run.stop.restore()
        if main:
            from ..model_card import write_model_card

            save_student(run, teacher, config)
            write_metrics(student_config.output_dir, metrics)
            write_model_card(student_config.output_dir, replace_edited_card=True)  # README.md (distillation.card)
        accelerator.wait_for_everyone()
        if not last:  # the next phase's run uses the same process group
            for tracker in accelerator.trackers:
                tracker.finish()
            return metrics
        accelerator.end_training()
    exit_launched_worker(accelerator)  # as a training run's launched worker (its teardown can hang)
    return metrics


def load_teacher(teacher, device):
    """The teacher pipeline (DDPMHFPipeline, our scheduler), frozen, in eval mode; RunError if it is not a DDPM."""
    from ..pipeline_ddpm_hf import DDPMHFPipeline
    from ..sampling import load_pipeline
    from ..scheduling_ddpm_hf import DDPMHFScheduler

    pipe = load_pipeline(DDPMHFPipeline, teacher)
    if not isinstance(pipe.scheduler, DDPMHFScheduler):
        raise RunError("the teacher {teacher} samples with {kind}: distillation needs a DDPM teacher (a ddpm-hf or "
                       "diffusers DDPMScheduler pipeline)", teacher=teacher, kind=type(pipe.scheduler).__name__)
    pipe.unet.requires_grad_(False).eval().to(device)
    return pipe


def check_teacher_fits(teacher, channels, resolution):
    """RunError unless the teacher's UNet takes images of the data's channels and resolution, and a conditional
    teacher's null class is its class embedding's last id (as ddpm-hf trains it; the student's grid of ids needs it)."""
    config = teacher.unet.config
    null = getattr(teacher.config, "null_class_id", None)
    if config.num_class_embeds is not None and null != config.num_class_embeds - 1:
        raise RunError("the teacher's null class id is {null}, not its last class id {last}: distillation needs a "
                       "class-conditional teacher whose null class is the last (a ddpm-hf --class_conditional run)",
                       null=null, last=config.num_class_embeds - 1)
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    if config.in_channels != channels or size != resolution:
        raise RunError("the teacher takes {c}x{s}x{s} images, the data is {dc}x{r}x{r}: distil on the data the "
                       "teacher was trained on", c=config.in_channels, s=size, dc=channels, r=resolution)


def student_unet(teacher_unet, channels, guidance_grid=1):
    """The student: the teacher's UNet2DModel configuration with ``channels`` outputs (no variance channels),
    initialised from the teacher's weights (the output convolution's first ``channels`` filters). A conditional
    teacher's K classes and null class become K ``guidance_grid`` + 1 class-embedding ids (``guided_class_ids``:
    class c at the j-th guidance scale is c M + j, each starting from the teacher's embedding of c; the null class
    last)."""
    from diffusers import UNet2DModel

    config = {k: v for k, v in teacher_unet.config.items() if not k.startswith("_")}
    state = teacher_unet.state_dict()
    for name in ("conv_out.weight", "conv_out.bias"):
        state[name] = state[name][:channels]
    if config.get("num_class_embeds") and guidance_grid > 1:
        classes = state["class_embedding.weight"]  # (K + 1, D), the null class last (check_teacher_fits)
        state["class_embedding.weight"] = torch.cat([classes[:-1].repeat_interleave(guidance_grid, 0), classes[-1:]])
        config["num_class_embeds"] = (config["num_class_embeds"] - 1) * guidance_grid + 1
    student = UNet2DModel.from_config({**config, "out_channels": channels})
    student.load_state_dict(state)
    return student


def load_student_unet(folder):
    """distribution_matching: the progressive student's UNet2DModel from ``folder``/unet (RunError if unreadable)."""
    from diffusers import UNet2DModel

    try:
        return UNet2DModel.from_pretrained(os.path.join(folder, "unet"))
    except Exception as error:  # noqa: BLE001 - missing or damaged weights: one clear line
        raise RunError("cannot load the student to refine from {folder}/unet: {cause}", folder=folder,
                       cause=f"{type(error).__name__}: {str(error).strip()[:300]}") from error


def student_guidance(teacher, config):
    """(the student's default guidance scale, its guidance scales) of a class-conditional teacher: the teacher's own
    default w (or --teacher_guidance_scale) and ``DistillConfig.student_guidance_scales``; (1.0, None) for an
    unconditional one."""
    if not config.student.class_conditional:
        return 1.0, None
    default = config.teacher_guidance_scale if config.teacher_guidance_scale is not None else \
        teacher._guidance_scale(None, [0])  # the teacher's own
    return float(default), config.student_guidance_scales(default)


def student_noise_scheduler(teacher_scheduler, prediction_type):
    """The student's DDPMHFScheduler: the teacher's schedule with the student's prediction type."""
    from ..scheduling_ddpm_hf import DDPMHFScheduler

    return DDPMHFScheduler.from_config(teacher_scheduler.config, prediction_type=prediction_type,
                                       variance_type="fixed_small")


def student_pipeline(unet, teacher, config, student_steps=None):
    """The student's pipeline: DDPMHFPipeline on the teacher's schedule with, for consistency distillation,
    diffusers' LCMScheduler on the grid (multistep consistency sampling, Song et al. 2023 Algorithm 1), for
    progressive distillation diffusers' DDIMScheduler (eta 0, "trailing" timesteps: the training grid, unclipped as
    trained) with ``student_steps`` (default: the last round's) as its default; and a conditional teacher's classes
    with the student's guidance scales (``student_guidance``): it learned the teacher's guided ODE at each, so it
    samples a class at a scale in one call per step, without classifier-free guidance of its own."""
    from diffusers import DDIMScheduler, LCMScheduler

    from ..pipeline_ddpm_hf import DDPMHFPipeline

    schedule = {k: v for k, v in teacher.scheduler.config.items() if k != "variance_type"}
    if config.method in ("progressive", "distribution_matching"):
        scheduler = DDIMScheduler.from_config(schedule, prediction_type=config.student.prediction_type,
                                              timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True,
                                              thresholding=False)
        steps = student_steps or config.num_student_steps
    else:
        scheduler = LCMScheduler.from_config(schedule, prediction_type=config.student.prediction_type,
                                             original_inference_steps=config.num_teacher_steps)
        steps = default_student_steps(config)
    classes = {}
    default, scales = student_guidance(teacher, config)
    if scales:  # the teacher's guidance is distilled in at each scale: one call per step, no CFG
        classes = dict(id2label=teacher.config.id2label, null_class_id=teacher.config.null_class_id * len(scales),
                       guidance_scale=default, guidance_scales=scales)
    pipe = DDPMHFPipeline(unet=unet, scheduler=scheduler, num_inference_steps=steps,
                          **{k: v for k, v in classes.items() if v is not None})
    pipe.set_progress_bar_config(disable=True)
    return pipe


DEFAULT_STUDENT_STEPS = 4


def default_student_steps(config):
    """The student pipeline's default UNet calls: consistency 4, or the grid's N if smaller; progressive the last
    round's student's steps."""
    if config.method != "consistency":
        return config.num_student_steps
    return min(DEFAULT_STUDENT_STEPS, config.num_teacher_steps)


def save_student(run, teacher, config):
    """The student's pipeline at output_dir (the EMA target's weights) and labelled sample grids in
    samples-K-step/: consistency at 1, 2 and the default K calls, progressive at its K."""
    from ..training.export import save_pipeline

    save_pipeline(run, lambda unet: student_pipeline(unet, teacher, config))
    steps = [config.num_student_steps] if config.method != "consistency" else sorted(
        {1, 2, default_student_steps(config)})
    write_student_samples(config.student.output_dir, config, steps)


def save_round(run, teacher, config, student_steps):
    """Progressive distillation: the pipeline of the round whose student samples in ``student_steps`` (the EMA
    weights) in rounds/K-step/, with its sample grid."""
    from ..training.export import save_pipeline

    folder = round_folder(config.student.output_dir, student_steps)
    save_pipeline(run, lambda unet: student_pipeline(unet, teacher, config, student_steps), folder)
    write_student_samples(folder, config, [student_steps])


def write_student_samples(folder, config, steps):
    """Labelled sample grids of the student pipeline in ``folder`` at each count of UNet calls in ``steps``."""
    from ..pipeline_ddpm_hf import DDPMHFPipeline
    from ..sampling import generate, write_samples
    from ..training.export import sample_grid_labels

    pipe = DDPMHFPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    count, labels, titles = sample_grid_labels(pipe, config.student.num_sample_images)  # a row per class, if any
    for k in steps:
        images, _ = generate(pipe, count, config.student.eval_batch_size, k, config.student.seed,
                             class_labels=labels)
        write_samples(pipe, images, os.path.join(folder, f"samples-{k}-step"),
                      f"student, {k} UNet call{'s' if k > 1 else ''}"
                      + (f", guidance {pipe._guidance_scale(None, [0])}" if labels else ""), row_labels=titles)


def teacher_train_seconds(teacher):
    """The teacher's training seconds from its metrics.json (``run_dir.read_metrics``), or None."""
    return read_metrics(teacher).get("train_seconds") if os.path.isdir(teacher) else None

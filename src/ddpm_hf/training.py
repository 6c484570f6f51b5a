"""Train a DDPM (Ho et al. 2020, Algorithm 1) on an image dataset with accelerate. Read it top to bottom.

Run it as ``accelerate launch scripts/train.py``, ``torchrun --nproc_per_node 2 scripts/train.py`` or
``ddpm-hf train``; with no flags it trains the embedded digits default. Flags keep the names and meaning of diffusers'
``examples/unconditional_image_generation/train_unconditional.py``; ``--recipe`` picks a named set of defaults
(ddpm_hf.recipes) that explicit flags override.

Outputs land where train_unconditional.py puts them: the pipeline in ``--output_dir`` itself (model_index.json,
unet/, scheduler/, the pipeline source, the model card README.md and images/), with checkpoint-N/, logs/, samples/,
metrics.json, history.jsonl, training_args.json and loss.png beside it.

Reproducibility: every random draw of micro-batch k on rank r (the data order of each epoch, timesteps, noise, flips,
dropout, random crops of streamed images) comes from seeds derived from (--seed, r, k) or (--seed, epoch), so a
run resumed from a checkpoint is bit-identical to one that never stopped.
"""

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time

import numpy as np
import torch

from .batches import step_seed
from .stopping import Interrupted, StopSignals, resume_command
from .training_args import parse_args  # noqa: F401  (``ddpm_hf.training.parse_args``, as before)

def run_files(output_dir):
    """The files and folders in ``output_dir`` that show it holds a training run (or its pipeline)."""
    if not os.path.isdir(output_dir):
        return []
    marks = ("training_args.json", "model_index.json", "history.jsonl", "metrics.json")
    return sorted(n for n in os.listdir(output_dir) if n in marks or n.startswith("checkpoint-"))


def unet_for_data(args, channels, resolution):
    """The UNet2DModel of --unet_preset (or --model_config_name_or_path) sized to the data's channels and resolution,
    with doubled output channels for learned variances and --dropout if given."""
    from diffusers import UNet2DModel

    from .unet_configs import unet_config

    learned = args.variance_type == "learned_range"
    extra = {} if args.dropout is None else {"dropout": args.dropout}
    if args.model_config_name_or_path:
        config = UNet2DModel.load_config(args.model_config_name_or_path)
        config.update(in_channels=channels, out_channels=channels * (2 if learned else 1), sample_size=resolution,
                      **extra)
        return UNet2DModel.from_config(config)
    config = unet_config(args.unet_preset, channels=channels, learned_variance=learned, sample_size=resolution,
                         **extra)
    return UNet2DModel(**config)


def micro_batches(step, accum, per_epoch):
    """The micro-batch indices k of optimizer step ``step`` (0-based). An epoch of ``per_epoch`` micro-batches is
    ceil(per_epoch / accum) optimizer steps, the last one with the remaining micro-batches, so that epochs count the
    same data whatever the accumulation; with streaming (``per_epoch`` None) every step takes ``accum``."""
    if per_epoch is None:
        return range(step * accum, (step + 1) * accum)
    epoch, j = divmod(step, math.ceil(per_epoch / accum))
    start = epoch * per_epoch + j * accum
    return range(start, min(start + accum, (epoch + 1) * per_epoch))


def train(args):
    """Train, then save the pipeline (EMA weights if --use_ema) at --output_dir with its model card, and the sample
    grid, denoising strip, loss plot, training_args.json and metrics.json beside it. Returns the metrics dict."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    from .checkpointing import OutputLock, remove_stale_tmp, resolve_checkpoint, verify_checkpoint

    # ------------------------------------------------------------------------------------------------------ setup
    # several processes and no GPU (torchrun on a CPU machine): accelerate needs cpu=True to pick MULTI_CPU (gloo)
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_cpu,
        mixed_precision=args.mixed_precision,
        dynamo_backend=args.dynamo_backend,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))],
    )
    main = accelerator.is_main_process
    lock = OutputLock(args.output_dir)
    stop = StopSignals()
    created = not os.path.isdir(args.output_dir)
    held = [] if args.overwrite_output_dir or args.resume_from_checkpoint else run_files(args.output_dir)
    if held:  # checked by every rank before any writes
        from .checkpointing import RunError

        raise RunError(f"--output_dir {args.output_dir} already holds a training run ({', '.join(held)}): add "
                       "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to replace it, or "
                       "choose another --output_dir")
    try:
        if main:  # one run per --output_dir (a dead run's lock is taken over)
            os.makedirs(args.output_dir, exist_ok=True)
            lock.acquire()
            remove_stale_tmp(args.output_dir)  # checkpoint-N.tmp of a run killed while writing
        accelerator.wait_for_everyone()
        resume = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.resume_from_checkpoint \
            else None
        if resume:  # every file opened before anything is written: a damaged checkpoint stops here, named
            verify_checkpoint(resume, accelerator.num_processes, args.use_ema, args.mixed_precision == "fp16")
        return _train(args, accelerator, lock, stop)
    except BaseException:
        if main and created and lock.held:  # a run that failed at start leaves no empty folder behind
            lock.release()
            with contextlib.suppress(OSError):
                os.rmdir(args.output_dir)
        raise
    finally:
        stop.restore()
        lock.release()


def _train(args, accelerator, lock, stop):
    import diffusers
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from . import __version__
    from .batches import EpochBatches, prepare_data
    from .checkpointing import (RunError, any_rank, checkpoint_dirs, read_history, read_training_state,
                                register_unet_hooks, resolve_checkpoint, save_checkpoint)
    from .data import dataset_source, to_model_range
    from .evaluation import evaluate_on_all_ranks, periodic_scores
    from .flat_parameters import ema_weights, flatten_parameters
    from .images import save_loss_plot
    from .losses import diffusion_loss
    from .hub import push_failure_message, push_run
    from .model_card import write_model_card
    from .pipeline_ddpm_hf import DDPMHFPipeline
    from .sampling import generate, write_samples
    from .scheduling_ddpm_hf import DDPMHFScheduler

    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    torch.manual_seed(args.seed)  # the same initial weights on every process

    # data, model, noise schedule
    with accelerator.main_process_first():  # one download into the cache, then the other ranks read it
        batches, held_out, channels, resolution = prepare_data(args, rank, world, accelerator.is_local_main_process)
    if main and args.overwrite_output_dir:  # only now that the data is known to load; the lock stays
        for name in os.listdir(args.output_dir):
            path = os.path.join(args.output_dir, name)
            if name != os.path.basename(lock.path):
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    accelerator.wait_for_everyone()
    unet = unet_for_data(args, channels, resolution).to(accelerator.device)
    model = unet  # the bare UNet; `unet` becomes the DDP wrapper and/or the compiled module after prepare()
    flat = flatten_parameters(model)  # one tensor for the optimizer, clipping and EMA
    inception = None  # periodic FID only when the Inception file is at hand (no download in a training run)
    if args.eval_steps and "fid" in args.eval_metrics and main:
        from .evaluation import InceptionWeightsMissing, load_inception

        try:
            inception = load_inception(args.inception_weights, download=False)
        except InceptionWeightsMissing as error:
            accelerator.print(f"--eval_metrics fid skipped: {error}")
    noise_scheduler = DDPMHFScheduler(num_train_timesteps=args.ddpm_num_steps, beta_schedule=args.ddpm_beta_schedule,
                                      prediction_type=args.prediction_type, variance_type=args.variance_type)
    T = args.ddpm_num_steps

    # steps: an epoch is ceil(micro-batches per epoch / accumulation) optimizer steps (see micro_batches)
    accum, per_epoch = args.gradient_accumulation_steps, batches.per_epoch
    steps_per_epoch = math.ceil(per_epoch / accum) if per_epoch else None
    if args.max_train_steps is None:
        args.max_train_steps = args.num_epochs * steps_per_epoch
    steps_per_epoch = steps_per_epoch or args.max_train_steps  # streaming: the whole run counts as one epoch
    if main:
        with open(os.path.join(args.output_dir, "training_args.json"), "w") as f:
            json.dump({k: v for k, v in vars(args).items() if k != "hub_token"}, f, indent=2)

    # fused AdamW over the one flat buffer: a single kernel instead of a Python loop over every tensor
    optimizer = torch.optim.AdamW([flat], lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    # once prepared, accelerate steps the LR scheduler once per process for each optimizer step (split_batches off),
    # so both lengths are counted in those units and optimizer step s gets the same LR for any number of processes.
    # It is stepped once per optimizer step, not per micro-batch, so (unlike the warm-up of diffusers' script, which
    # is multiplied by the accumulation steps) no accumulation factor enters.
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * world,
                                 num_training_steps=args.max_train_steps * world)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    ema = None
    if args.use_ema:
        ema = EMAModel([flat], decay=args.ema_max_decay, use_ema_warmup=True,
                       inv_gamma=args.ema_inv_gamma, power=args.ema_power, foreach=True)
    register_unet_hooks(accelerator, model, flat, ema)  # checkpoint-N/unet and unet_ema as UNet2DModel folders
    if args.logger != "none":
        accelerator.init_trackers("ddpm-hf", config={k: v for k, v in vars(args).items()
                                                     if isinstance(v, (int, float, str, bool)) and k != "hub_token"})

    # resume
    step, images_seen, elapsed_before = 0, 0, 0.0
    resume = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.resume_from_checkpoint else None
    if args.resume_from_checkpoint == "latest" and resume is None:
        accelerator.print(f"--resume_from_checkpoint latest: no checkpoint in {args.output_dir}, starting fresh")
    if resume:  # (verified in train() before anything was written)
        try:
            accelerator.load_state(resume)
        except Exception as error:  # noqa: BLE001 - e.g. weights of another UNet configuration
            raise RunError(f"could not resume from {resume}: {type(error).__name__}: "
                           f"{str(error).strip()[:500]}. Resume with the flags of the run that wrote it, or from "
                           "another checkpoint.") from error
        if ema is not None:
            ema.to(accelerator.device)
        state = read_training_state(resume)
        step, images_seen, elapsed_before = state["step"], state["images_seen"], state["elapsed"]
        accelerator.print(f"resumed from {resume} at step {step}")
    # per-step records, appended to history.jsonl as they come (a resume drops the records after its checkpoint)
    history_path = os.path.join(args.output_dir, "history.jsonl")
    history = read_history(history_path, step) if resume else []
    if main:
        with open(history_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
    first_batch_checksum = None

    # ------------------------------------------------------- the loop: Ho Algorithm 1 with accumulation, clipping, EMA
    progress = tqdm(total=args.max_train_steps, initial=step, desc="training", disable=not accelerator.is_local_main_process)
    start_time, window_start, window_images, first_step_seconds = time.time(), time.time(), 0, None
    unet.train()
    stop.install()  # SIGTERM / SIGINT set a flag; every rank checkpoints at the end of that step and stops
    while step < args.max_train_steps:
        total_loss = 0.0
        ks = micro_batches(step, accum, per_epoch)
        for n, k in enumerate(ks):  # k: micro-batch index of the whole run
            g = torch.Generator().manual_seed(step_seed(args.seed, rank, k))
            torch.manual_seed(step_seed(args.seed, rank, k, 1))  # dropout
            raw = batches.batch(k)
            if first_batch_checksum is None:
                first_batch_checksum = _checksum([raw.float()])
            x0 = to_model_range(raw, args.random_flip, g).to(accelerator.device)
            noise = torch.randn(x0.shape, generator=g).to(accelerator.device)
            t = torch.randint(0, T, (x0.shape[0],), generator=g).to(accelerator.device)
            noisy = noise_scheduler.add_noise(x0, noise, t)  # Ho eq. 4
            sync = n == len(ks) - 1
            with accelerator.no_sync(unet) if not sync and world > 1 else contextlib.nullcontext():
                with accelerator.autocast():
                    output = unet(noisy, t).sample
                loss, mse, vlb = diffusion_loss(noise_scheduler, output, x0, noisy, noise, t, args.snr_gamma,
                                                args.vlb_weight)
                accelerator.backward(loss / len(ks))
            total_loss += loss.detach().item() / len(ks)
            images_seen += x0.shape[0] * world
            window_images += x0.shape[0] * world
        grad_norm = None
        if args.max_grad_norm > 0:  # one norm and one scaling of the flat gradient
            accelerator.unscale_gradients()  # (fp16 only)
            grad_norm = torch.nn.utils.clip_grad_norm_([flat], args.max_grad_norm, foreach=False)
        # a NaN/inf loss or gradient stops the run before it reaches the weights (fp16's scaler skips inf gradients
        # itself); one all-reduce of this flag and the signal flag per step keeps the ranks in step
        norm = grad_norm if grad_norm is not None else torch.linalg.vector_norm(flat.grad)
        finite = math.isfinite(total_loss) and (args.mixed_precision == "fp16" or bool(torch.isfinite(norm)))
        bad, signalled = any_rank(accelerator, [not finite, stop.signum is not None])
        if bad:
            names = checkpoint_dirs(args.output_dir)
            last = os.path.join(args.output_dir, names[-1]) if names else None
            raise RunError(
                f"step {step + 1}: the loss is {total_loss:.6g} and the gradient norm {float(norm):.6g} on process "
                f"{rank}{' (another process had a non-finite value)' if finite else ''}: stopped before this step "
                f"changed the weights; nothing was saved after step {step}. The last good checkpoint is "
                f"{last or 'none (no checkpoint was written)'}. Start again with a lower --learning_rate (now "
                f"{args.learning_rate:g}) or stronger clipping (--max_grad_norm){'; a resume from the checkpoint keeps its saved learning-rate schedule' if last else ''}.")
        optimizer.step()
        lr_scheduler.step()
        flat.grad.zero_()  # the gradient views must stay (see flatten_parameters)
        if ema is not None:
            ema.step([flat])
        step += 1
        if first_step_seconds is None:  # includes one-off costs: a torch.compile, first-call allocations
            first_step_seconds = time.time() - start_time

        # bookkeeping
        now = time.time()
        epoch_done = step % steps_per_epoch == 0
        epoch = math.ceil(step / steps_per_epoch)  # the epoch this step belongs to, from 1
        if per_epoch is None:
            epoch = batches.epoch + 1  # streaming: this rank's pass over its shard of the stream, from 1
        record = {"step": step, "epoch": epoch, "seconds": round(elapsed_before + now - start_time, 3),
                  "loss": total_loss, "lr": lr_scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        quartile = (t * 4 // T).clamp(max=3)  # L_simple of the last micro-batch by timestep quartile
        sums = torch.zeros(4, dtype=mse.dtype, device=mse.device).index_add_(0, quartile, mse)
        counts = torch.bincount(quartile, minlength=4)
        for q, (total, count) in enumerate(zip(sums.tolist(), counts.tolist())):
            if count:
                record[f"loss_t_q{q + 1}"] = total / count
        if vlb is not None:
            record["vlb_bpd"] = vlb.mean().item()  # the one-sample estimate T * L_{t-1} of the bound, bits/dim
        if args.eval_steps and step % args.eval_steps == 0 and step < args.max_train_steps:
            with ema_weights(model, flat, ema) as ema_unet:  # --eval_metrics, into the record (history, tensorboard)
                record.update(periodic_scores(accelerator, ema_unet, noise_scheduler, held_out, args, inception))
            model.train()
        history.append(record)
        if main:
            with open(history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        rate = window_images / max(now - window_start, 1e-9)
        progress.update(1)
        progress.set_postfix(loss=f"{total_loss:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{rate:.0f}")
        if step % 50 == 0:
            window_start, window_images = now, 0
        accelerator.log({k: v for k, v in record.items() if k not in ("step", "seconds")}, step=step)

        # periodic work: checkpoints, sample grids, pipeline saves, held-out bits/dim
        checkpoint_state = {"step": step, "images_seen": images_seen,
                            "elapsed": elapsed_before + time.time() - start_time}
        if step % args.checkpointing_steps == 0 and step < args.max_train_steps:
            save_checkpoint(accelerator, args.output_dir, step, checkpoint_state, args.checkpoints_total_limit)
        if signalled:  # every rank saw the flag at the same step: checkpoint here, then stop
            if step % args.checkpointing_steps or step == args.max_train_steps:
                save_checkpoint(accelerator, args.output_dir, step, checkpoint_state, args.checkpoints_total_limit)
            raise Interrupted(stop.signum or signal.SIGTERM, os.path.join(args.output_dir, f"checkpoint-{step}"))
        periodic = step < args.max_train_steps and epoch_done  # the end of the run saves everything anyway
        if main and periodic and args.save_images_epochs and epoch % args.save_images_epochs == 0:
            with ema_weights(model, flat, ema) as ema_unet:
                pictures = _save_samples(args, ema_unet, noise_scheduler, f"epoch {epoch}", f"samples-epoch{epoch}")
            model.train()
            _log_pictures(accelerator, args, pictures, step)
        if main and periodic and args.save_model_epochs and epoch % args.save_model_epochs == 0:
            _save_pipeline(args, model, flat, ema, noise_scheduler)
    progress.close()
    train_seconds = elapsed_before + time.time() - start_time
    accelerator.wait_for_everyone()

    # ----------------------------------------------------------------------------------------------------- finish
    metrics = {"recipe": args.recipe, "steps": step, "images_seen": images_seen,
               "data_seconds": round(batches.transform_seconds, 2), "train_seconds": round(train_seconds, 2),
               "first_step_seconds": round(first_step_seconds or 0.0, 2),
               "images_per_second": round(images_seen / max(train_seconds, 1e-9), 1), "processes": world,
               "device": accelerator.device.type, "parameters": flat.numel(),
               "dataset_source": dataset_source(args.dataset_name, args.train_data_dir),
               "versions": {"ddpm-hf": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}}
    if isinstance(batches, EpochBatches):  # cached data: the number of training images is known
        metrics["train_images"] = len(batches.images)
    if world > 1:  # checks across ranks: the same weights, different data
        checks = torch.tensor([_checksum(model.parameters()), first_batch_checksum], dtype=torch.float64,
                              device=accelerator.device)
        gathered = accelerator.gather(checks[None]).view(world, 2).cpu()
        metrics["weights_identical_across_ranks"] = bool((gathered[:, 0] == gathered[0, 0]).all())
        metrics["first_batches_distinct_across_ranks"] = len(set(gathered[:, 1].tolist())) == world
        metrics["process_group_timeout_seconds"] = _process_group_timeout(accelerator.device)
    if any_rank(accelerator, [stop.signum is not None])[0]:  # a signal during the last step
        save_checkpoint(accelerator, args.output_dir, step, {"step": step, "images_seen": images_seen,
                                                            "elapsed": train_seconds}, args.checkpoints_total_limit)
        raise Interrupted(stop.signum or signal.SIGTERM, os.path.join(args.output_dir, f"checkpoint-{step}"))
    if held_out is not None:  # held-out bits/dim of the weights that are saved (EMA if on), on every rank
        eval_start = time.time()
        with ema_weights(model, flat, ema) as ema_unet:
            metrics.update(evaluate_on_all_ranks(accelerator, ema_unet, noise_scheduler, held_out,
                                                 args.eval_batch_size, args.seed))
        metrics["eval_seconds"] = round(time.time() - eval_start, 1)
        accelerator.log({"eval/bits_per_dim": metrics["bits_per_dim"]}, step=step)
    if any_rank(accelerator, [stop.signum is not None])[0]:  # a signal during the evaluation
        save_checkpoint(accelerator, args.output_dir, step, {"step": step, "images_seen": images_seen,
                                                            "elapsed": train_seconds}, args.checkpoints_total_limit)
        raise Interrupted(stop.signum or signal.SIGTERM, os.path.join(args.output_dir, f"checkpoint-{step}"))
    stop.restore()  # the main process's final writes: a signal now stops at once (the checkpoints are complete)
    push_error = None
    if main:
        _save_pipeline(args, model, flat, ema, noise_scheduler)
        pipe = DDPMHFPipeline.from_pretrained(args.output_dir).to(accelerator.device)
        pipe.set_progress_bar_config(disable=True)
        sample_start = time.time()
        images, strip = generate(pipe, args.num_sample_images, args.eval_batch_size, args.ddpm_num_inference_steps,
                                 args.seed, strip=True)
        metrics["sampling_seconds"] = round(time.time() - sample_start, 1)
        name = os.path.basename(os.path.normpath(args.dataset_name or args.train_data_dir or "digits"))
        title = (f"{name}: {step} steps, {args.ddpm_num_inference_steps} sampling steps"
                 f"{', EMA' if ema is not None else ''}")
        pictures = write_samples(pipe, images, os.path.join(args.output_dir, "samples"), title, strip)
        _log_pictures(accelerator, args, pictures, step)
        save_loss_plot(history, os.path.join(args.output_dir, "loss.png"), f"{name} training loss")
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        write_model_card(args.output_dir, repo_id=args.hub_model_id)  # README.md and images/
        if args.push_to_hub:
            try:
                push_run(args.output_dir, args.hub_model_id, private=args.hub_private_repo, token=args.hub_token,
                         revision=args.hub_revision)
            except Exception as error:  # the run is saved: say how to upload it without training again
                push_error = push_failure_message(error, args.output_dir, args.hub_model_id, args.hub_private_repo,
                                                  args.hub_revision, args.hub_token)
    # every rank waits for rank 0's outputs, then all leave the process group together: a rank that destroys it early
    # can leave the others hanging in their own destroy_process_group (seen with gloo under torchrun)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if push_error:
        raise PushFailed(push_error)
    return metrics


def _checksum(tensors):
    """A float64 fingerprint of tensors' exact values (sum of value * position weights)."""
    total = 0.0
    for i, x in enumerate(tensors):
        flat = x.detach().double().flatten()
        total += float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).sin()).sum()) * (i + 1)
    return total


def _process_group_timeout(device):
    """The timeout of the live default process group in seconds (what --ddp_timeout set), or None if unreadable."""
    try:
        backend = torch.distributed.group.WORLD._get_backend(device)
        return backend.options._timeout.total_seconds()
    except (AttributeError, RuntimeError):
        return None


def _save_pipeline(args, model, flat, ema, noise_scheduler):
    """The pipeline (EMA weights if on) at --output_dir, as train_unconditional.py saves it."""
    from .flat_parameters import ema_weights
    from .pipeline_ddpm_hf import DDPMHFPipeline
    from .scheduling_ddpm_hf import DDPMHFScheduler

    from .checkpointing import RunError, write_error_message

    # written beside the run first and moved in when complete: a failed write (disk full) leaves the pipeline saved
    # before it (if any) as it was
    tmp = os.path.join(args.output_dir, ".pipeline.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with ema_weights(model, flat, ema) as unet:
            scheduler = DDPMHFScheduler.from_config(noise_scheduler.config)
            DDPMHFPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
    except Exception as error:  # noqa: BLE001 - reported with the file it was writing
        message = write_error_message("the pipeline", tmp, error, args.output_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(message) from error
    finally:
        model.train()
    for name in os.listdir(tmp):
        target = os.path.join(args.output_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, name), target)
    os.rmdir(tmp)


def _save_samples(args, unet, noise_scheduler, label, folder):
    from .pipeline_ddpm_hf import DDPMHFPipeline
    from .sampling import generate, write_samples
    from .scheduling_ddpm_hf import DDPMHFScheduler

    pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler.from_config(noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    images, _ = generate(pipe, args.num_sample_images, args.eval_batch_size, args.ddpm_num_inference_steps, args.seed)
    return write_samples(pipe, images, os.path.join(args.output_dir, folder),
                         f"{label}, {args.ddpm_num_inference_steps} steps")


def _log_pictures(accelerator, args, pictures, step):
    """The sample grid and denoising strip as tensorboard images (tags samples/grid, samples/strip)."""
    if args.logger != "tensorboard":
        return
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    for name, picture in pictures.items():
        writer.add_image(f"samples/{name}", np.asarray(picture.convert("RGB")), step, dataformats="HWC")


class PushFailed(RuntimeError):
    """The run finished and is saved, but its upload to the Hub failed (the message says how to resume it)."""


def main(argv=None):
    from .checkpointing import RunError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        return train(args)
    except (PushFailed, RunError) as error:
        print(f"ddpm-hf train: error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stopped:
        if int(os.environ.get("RANK", "0")) == 0:  # one message, from the main process
            launcher = " (launched as before: torchrun / accelerate launch)" if "WORLD_SIZE" in os.environ else ""
            print(f"ddpm-hf train: stopped by {signal.Signals(stopped.signum).name}: saved {stopped.checkpoint}. "
                  f"Resume with: {resume_command(argv)}{launcher}", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    except KeyboardInterrupt:
        print("ddpm-hf train: interrupted (Ctrl-C). The complete checkpoints in --output_dir are kept; resume with: "
              f"{resume_command(argv)}", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)

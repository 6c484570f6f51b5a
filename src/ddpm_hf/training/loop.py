"""Train a DDPM (Ho et al. 2020, Algorithm 1) on an image dataset with accelerate. ``train`` reads top to bottom,
like diffusers' train_unconditional.py ``main``: data, model and noise schedule, optimizer, resume, the loop, the end.

Outputs land where train_unconditional.py puts them: the pipeline in ``output_dir`` itself (model_index.json, unet/,
scheduler/, the pipeline source, the model card README.md and images/), with checkpoint-N/, logs/, samples/,
metrics.json, history.jsonl, training_args.json and loss.png beside it (ddpm_hf.run_dir).

Reproducibility: every random draw of micro-batch k on rank r (the data order of each epoch, timesteps, noise, flips,
dropout, random crops of streamed images) comes from seeds derived from (seed, r, k) or (seed, epoch), so a run
resumed from a checkpoint is bit-identical to one that never stopped.
"""

import contextlib
import dataclasses
import math
import os
import time

import torch

from .. import __version__
from ..conditioning import drop_labels
from ..data import EpochBatches, dataset_source, prepare_data, step_seed, to_model_range
from ..errors import RunError, StreamFailed
from ..evaluation import evaluate_on_all_ranks, periodic_scores
from ..run_dir import TRAINING_ARGS, History, latest_checkpoint, read_history, write_json_atomic
from .checkpoints import any_rank
from .export import finish, save_pipeline, save_samples
from .flat_parameters import ema_weights, flatten_parameters, view_parameters
from .lifecycle import Run, exit_launched_worker, start_trackers
from .model_setup import shifted_betas, unet_for_data


def train(config):
    """Train with ``config`` (a TrainConfig), then save the pipeline (EMA weights if ``use_ema``) at ``output_dir``
    with its model card, samples, loss plot, training_args.json and metrics.json. Returns the metrics dict. Raises
    RunError (a failure to act on), Interrupted (SIGTERM/SIGINT: a checkpoint of the current step was written)."""
    import diffusers
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from ..scheduling_ddpm_hf import DDPMHFScheduler

    with Run(config) as run:
        accelerator, main = run.accelerator, run.main
        rank, world = accelerator.process_index, accelerator.num_processes
        torch.manual_seed(config.seed)  # the same initial weights on every process

        # data, model, noise schedule
        with accelerator.main_process_first():  # one download into the cache, then the other ranks read it
            batches, held_out, channels, resolution = prepare_data(config, rank, world,
                                                                   accelerator.is_local_main_process)
        run.clear_for_overwrite()  # only now that the data is known to load
        if config.class_conditional:  # the class names, kept for training_args.json, the pipeline and the card
            config = dataclasses.replace(config, class_names=batches.class_names)
        held_out_labels = batches.held_out_labels
        model = unet_for_data(config, channels, resolution).to(accelerator.device)
        flat = flatten_parameters(model)  # one tensor for the optimizer, clipping and EMA
        inception = periodic_inception(config, accelerator)
        noise_scheduler = DDPMHFScheduler(num_train_timesteps=config.ddpm_num_steps,
                                          beta_schedule=config.ddpm_beta_schedule, trained_betas=shifted_betas(config),
                                          prediction_type=config.prediction_type, variance_type=config.variance_type)

        config, steps_per_epoch = step_budget(config, batches.per_epoch)
        accum, per_epoch = config.gradient_accumulation_steps, batches.per_epoch
        if main:
            write_json_atomic(os.path.join(config.output_dir, TRAINING_ARGS), config.record())

        optimizer, lr_scheduler = optimization(config, accelerator, flat)
        unet, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)  # unet: DDP/compiled
        view_parameters(model, flat)  # DDP on CPU re-allocates the parameters: views of flat again
        ema = EMAModel([flat], decay=config.ema_max_decay, use_ema_warmup=True, inv_gamma=config.ema_inv_gamma,
                       power=config.ema_power, foreach=True) if config.use_ema else None
        run.register(config, model, flat, ema, noise_scheduler)
        start_trackers(config, accelerator)

        # resume: weights, optimizer, LR schedule, RNG and counters; history.jsonl trimmed to the checkpoint
        counters = run.resume()
        step, images_seen = counters["step"], counters["images_seen"]
        history = History(config.output_dir, read_history(config.output_dir, step) if run.resume_from else [], main)

        # the loop: Ho Algorithm 1 with gradient accumulation, clipping, the NaN guard and the EMA
        progress = tqdm(total=config.max_train_steps, initial=step, desc="training",
                        disable=not accelerator.is_local_main_process)
        start_time, first_step_seconds, first_batch = time.time(), None, None
        unet.train()
        run.stop.install()  # SIGTERM / SIGINT set a flag; every rank checkpoints at the end of that step and stops
        while step < config.max_train_steps:
            total_loss, ks = 0.0, micro_batches(step, accum, per_epoch)
            for n, k in enumerate(ks):  # k: micro-batch index of the whole run
                try:
                    raw = batches.batch(k)
                except StreamFailed as error:  # the stream's retries are spent: keep what was trained
                    raise stream_failed(run, error, counters) from error
                labels = batches.labels(k) if config.class_conditional else None
                first_batch = first_batch if first_batch is not None else checksum([raw.float()])
                sync = n == len(ks) - 1 or world == 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(unet):
                    loss, mse, vlb, t = algorithm1_step(config, accelerator, unet, noise_scheduler, raw, rank, k,
                                                      labels)
                    accelerator.backward(loss / len(ks))
                total_loss += loss.detach().item() / len(ks)
                images_seen += raw.shape[0] * world
            grad_norm = None
            if config.max_grad_norm > 0:  # one norm and one scaling of the flat gradient
                accelerator.unscale_gradients()  # (fp16 only)
                grad_norm = torch.nn.utils.clip_grad_norm_([flat], config.max_grad_norm, foreach=False)
            # one all-reduce of the NaN flag and the signal flag per step keeps the ranks in step
            norm = grad_norm if grad_norm is not None else torch.linalg.vector_norm(flat.grad)
            finite = math.isfinite(total_loss) and (config.mixed_precision == "fp16" or bool(torch.isfinite(norm)))
            bad, signalled = any_rank(accelerator, [not finite, run.stop.signum is not None])
            if bad:  # before the weights change
                raise non_finite_error(config, step, total_loss, norm, rank, finite)
            optimizer.step()
            lr_scheduler.step()
            flat.grad.zero_()  # the gradient views must stay (see flatten_parameters)
            if ema is not None:
                ema.step([flat])
            step += 1
            first_step_seconds = first_step_seconds or time.time() - start_time  # with one-off costs (compile)

            # records: history.jsonl, the tracker, the progress bar; --eval_metrics every --eval_steps
            epoch = math.ceil(step / steps_per_epoch) if per_epoch else batches.epoch + 1  # from 1
            record = step_record(step, epoch, counters["elapsed"] + time.time() - start_time, total_loss,
                                 lr_scheduler.get_last_lr()[0], grad_norm, t, mse, vlb, config.ddpm_num_steps)
            if config.eval_steps and step % config.eval_steps == 0 and step < config.max_train_steps:
                with ema_weights(model, flat, ema) as ema_unet:
                    record.update(periodic_scores(accelerator, ema_unet, noise_scheduler, held_out, config,
                                                  inception, held_out_labels, run.stop.requested))
                model.train()
            history.append(record)
            progress.update(1)
            progress.set_postfix(loss=f"{total_loss:.4f}", lr=f"{record['lr']:.2e}")
            accelerator.log({k: v for k, v in record.items() if k not in ("step", "seconds")}, step=step)

            # checkpoints (periodic, or at this step on a signal, then stop), sample grids, pipeline saves
            counters = {"step": step, "images_seen": images_seen,
                        "elapsed": counters["elapsed"] + time.time() - start_time}
            start_time = time.time()
            run.checkpoint_after_step(counters, signalled)
            periodic = step < config.max_train_steps and step % steps_per_epoch == 0  # the end saves anyway
            if main and periodic and config.save_images_epochs and epoch % config.save_images_epochs == 0:
                save_samples(run, epoch, step)
            if main and periodic and config.save_model_epochs and epoch % config.save_model_epochs == 0:
                save_pipeline(run)
        progress.close()
        accelerator.wait_for_everyone()

        # the end: held-out bits/dim of the weights that are saved (EMA if on), on every rank; then rank 0's outputs
        metrics = run_metrics(config, accelerator, batches, model, flat, counters, first_step_seconds, first_batch)
        metrics["versions"] = {"ddpm-hf": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
        if run.signalled():  # a signal during the last step
            run.checkpoint("signal", counters)
        if held_out is not None:
            bound = held_out_bits_per_dim(run, held_out, held_out_labels)  # None: a signal stopped it
            if bound:
                metrics.update(bound)
                accelerator.log({"eval/bits_per_dim": bound["bits_per_dim"]}, step=step)
        if run.signalled():  # a signal during the evaluation (which stopped it: ``should_stop``)
            run.checkpoint("signal", counters)
        run.stop.restore()  # the main process's final writes: a signal now stops at once (checkpoints are complete)
        push_error = finish(run, history.records, metrics) if main else None
        # every rank waits for rank 0's outputs, then all leave the process group together: a rank that destroys it
        # early can leave the others hanging in their own destroy_process_group (seen with gloo under torchrun)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        if push_error:
            raise push_error
    exit_launched_worker(accelerator)  # a launched worker of several ends here (teardown can hang: see there)
    return metrics


def step_budget(config, per_epoch):
    """``config`` with ``max_train_steps`` set (from ``num_epochs`` if it was not given) and the optimizer steps of an
    epoch: ceil(micro-batches per epoch / accumulation) (see micro_batches); a stream's whole run is one epoch."""
    steps_per_epoch = math.ceil(per_epoch / config.gradient_accumulation_steps) if per_epoch else None
    if config.max_train_steps is None:
        config = dataclasses.replace(config, max_train_steps=config.num_epochs * steps_per_epoch)
    return config, steps_per_epoch or config.max_train_steps


def optimization(config, accelerator, flat):
    """Fused AdamW over the one flat buffer (a single kernel instead of a Python loop over every tensor) and the LR
    schedule. accelerate steps a prepared LR scheduler once per process for each optimizer step, so both lengths
    count in those units and step s gets the same LR for any number of processes; no accumulation factor enters."""
    from diffusers.optimization import get_scheduler

    world = accelerator.num_processes
    optimizer = torch.optim.AdamW([flat], lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps * world,
                                 num_training_steps=config.max_train_steps * world)
    return optimizer, lr_scheduler


def held_out_bits_per_dim(run, held_out, labels=None):
    """The held-out bits/dim (Ho eq. 5, all T terms) of ``run``'s weights that are saved (EMA if on), split across
    ranks, with its terms and the seconds it took; for a class-conditional run the conditional bound of
    -log p(x | y), the images' class ids ``labels`` (M,) given to the model. None when a signal stopped it (each
    rank stops its share at the next term instead of finishing a bound that can take half an hour)."""
    start = time.time()
    with ema_weights(run.model, run.flat, run.ema) as ema_unet:
        result = evaluate_on_all_ranks(run.accelerator, ema_unet, run.noise_scheduler, held_out,
                                       run.config.eval_batch_size, run.config.seed, labels=labels,
                                       should_stop=run.stop.requested)
    return None if result is None else {**result, "eval_seconds": round(time.time() - start, 1)}


def algorithm1_step(config, accelerator, unet, noise_scheduler, raw, rank, k, labels=None):
    """The loss of micro-batch ``k`` (uint8 images ``raw``, (B, C, H, W)) on ``rank`` (Ho Algorithm 1, lines 2-5):
    x_0 in [-1, 1], t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample (Ho eq. 4), then ``diffusion_loss`` (L_simple, Ho
    eq. 14, with --snr_gamma weighting; + lambda L_vlb for learned variances, Nichol & Dhariwal eq. 16). Every draw
    is seeded by (seed, rank, k), dropout too. With class ids ``labels`` (B,) (class-conditional runs), each is
    replaced by the null class with probability cond_drop_prob (Ho & Salimans 2022, Algorithm 1), drawn from the same
    generator after t, and the model is eps(x_t, t, c). Returns (loss, per-image L_simple (B,), per-image L_vlb or
    None, t)."""
    from ..losses import diffusion_loss

    g = torch.Generator().manual_seed(step_seed(config.seed, rank, k))
    torch.manual_seed(step_seed(config.seed, rank, k, 1))  # dropout
    x0 = to_model_range(raw, config.random_flip, g).to(accelerator.device)
    noise = torch.randn(x0.shape, generator=g).to(accelerator.device)
    t = torch.randint(0, config.ddpm_num_steps, (x0.shape[0],), generator=g).to(accelerator.device)
    if labels is not None:
        labels = drop_labels(labels, len(config.class_names), config.cond_drop_prob, g).to(accelerator.device)
    noisy = noise_scheduler.add_noise(x0, noise, t)  # Ho eq. 4
    with accelerator.autocast():
        output = unet(noisy, t, class_labels=labels).sample
    loss, mse, vlb = diffusion_loss(noise_scheduler, output, x0, noisy, noise, t, config.snr_gamma,
                                    config.vlb_weight)
    return loss, mse, vlb, t


def stream_failed(run, error, counters):
    """``error`` (StreamFailed) with where the run can go on from: one process saves checkpoint-N of the last
    finished step first; with several, the last periodic checkpoint (every rank would have to save together)."""
    if run.accelerator.num_processes == 1:
        run.checkpoint("stream", counters)
        where = f"saved checkpoint-{counters['step']}"
    else:
        where = "the last complete checkpoint in {output_dir} is kept"
    return StreamFailed(error.template + f"; {where}: run again with {{resume_from_checkpoint}} latest to go on",
                        **error.values)


def non_finite_error(config, step, loss, norm, rank, finite_here):
    """The NaN guard's RunError: the step, the values, the last good checkpoint and what to change."""
    last = latest_checkpoint(config.output_dir)
    return RunError(
        "step {step}: the loss is {loss} and the gradient norm {norm} on process {rank}{others}: stopped before this "
        "step changed the weights; nothing was saved after step {saved}. The last good checkpoint is {last}. Start "
        "again with a lower {learning_rate} (now {lr}) or stronger clipping ({max_grad_norm}){schedule}.",
        step=step + 1, loss=f"{loss:.6g}", norm=f"{float(norm):.6g}", rank=rank,
        others=" (another process had a non-finite value)" if finite_here else "", saved=step,
        last=last or "none (no checkpoint was written)", lr=f"{config.learning_rate:g}",
        schedule="; a resume from the checkpoint keeps its saved learning-rate schedule" if last else "")


def step_record(step, epoch, seconds, loss, lr, grad_norm, t, mse, vlb, T):
    """One history.jsonl line: the step's loss, LR, gradient norm, L_simple of the last micro-batch by timestep
    quartile and the one-sample bound estimate T * L_{t-1} in bits/dim (learned variances)."""
    record = {"step": step, "epoch": epoch, "seconds": round(seconds, 3), "loss": loss, "lr": lr}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    quartile = (t * 4 // T).clamp(max=3)
    sums = torch.zeros(4, dtype=mse.dtype, device=mse.device).index_add_(0, quartile, mse.detach())
    counts = torch.bincount(quartile, minlength=4)
    for q, (total, count) in enumerate(zip(sums.tolist(), counts.tolist())):
        if count:
            record[f"loss_t_q{q + 1}"] = total / count
    if vlb is not None:
        record["vlb_bpd"] = vlb.mean().item()
    return record


def run_metrics(config, accelerator, batches, model, flat, counters, first_step_seconds, first_batch):
    """metrics.json's training numbers; with several processes, checks that the ranks hold the same weights and
    read different data."""
    world, seconds = accelerator.num_processes, counters["elapsed"]
    metrics = {"recipe": config.recipe, "steps": counters["step"], "images_seen": counters["images_seen"],
               "data_seconds": round(batches.transform_seconds, 2), "train_seconds": round(seconds, 2),
               "first_step_seconds": round(first_step_seconds or 0.0, 2),
               "images_per_second": round(counters["images_seen"] / max(seconds, 1e-9), 1), "processes": world,
               "device": accelerator.device.type, "parameters": flat.numel(),
               "dataset_source": dataset_source(config.dataset_name, config.train_data_dir)}
    if isinstance(batches, EpochBatches):  # cached data: the number of training images is known
        metrics["train_images"] = len(batches.images)
    skipped = {name: u.names for name, u in (("train", getattr(batches, "unreadable", None)),
                                             ("held_out", getattr(batches, "held_out_unreadable", None))) if u}
    if any(skipped.values()):  # corrupt files skipped (without --strict): how many, the first few by file name
        metrics["unreadable_images_skipped"] = {name: len(names) for name, names in skipped.items()} | {
            "first": [os.path.basename(n) for names in skipped.values() for n in names][:5]}
    if world > 1:
        checks = torch.tensor([checksum(model.parameters()), first_batch or 0.0], dtype=torch.float64,
                              device=accelerator.device)
        gathered = accelerator.gather(checks[None]).view(world, 2).cpu()
        metrics["weights_identical_across_ranks"] = bool((gathered[:, 0] == gathered[0, 0]).all())
        metrics["first_batches_distinct_across_ranks"] = len(set(gathered[:, 1].tolist())) == world
        metrics["process_group_timeout_seconds"] = process_group_timeout(accelerator.device)
    return metrics


def micro_batches(step, accum, per_epoch):
    """The micro-batch indices k of optimizer step ``step`` (0-based). An epoch of ``per_epoch`` micro-batches is
    ceil(per_epoch / accum) optimizer steps, the last one with the remaining micro-batches, so that epochs count the
    same data whatever the accumulation; with streaming (``per_epoch`` None) every step takes ``accum``."""
    if per_epoch is None:
        return range(step * accum, (step + 1) * accum)
    epoch, j = divmod(step, math.ceil(per_epoch / accum))
    start = epoch * per_epoch + j * accum
    return range(start, min(start + accum, (epoch + 1) * per_epoch))


def periodic_inception(config, accelerator):
    """The Inception network for periodic FID, only when its file is at hand (no download in a training run)."""
    if not (config.eval_steps and "fid" in config.eval_metrics and accelerator.is_main_process):
        return None
    from ..evaluation import InceptionWeightsMissing, load_inception

    try:
        return load_inception(config.inception_weights, download=False)
    except InceptionWeightsMissing as error:
        accelerator.print(f"eval_metrics: fid skipped: {error}")
        return None


def checksum(tensors):
    """A float64 fingerprint of tensors' exact values (sum of value * position weights)."""
    total = 0.0
    for i, x in enumerate(tensors):
        flat = x.detach().double().flatten()
        total += float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).sin()).sum()) * (i + 1)
    return total


def process_group_timeout(device):
    """The timeout of the live default process group in seconds (what --ddp_timeout set), or None if unreadable."""
    try:
        return torch.distributed.group.WORLD._get_backend(device).options._timeout.total_seconds()
    except (AttributeError, RuntimeError):
        return None

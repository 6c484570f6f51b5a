"""What a training run leaves for people and the Hub: the pipeline at --output_dir (as train_unconditional.py saves
it), sample grids and the denoising strip, the loss plot, metrics.json, the model card and, on request, the upload."""

import os
import shutil
import time

import numpy as np

from ..run_dir import PIPELINE_TMP, write_metrics
from .checkpoints import write_error
from .flat_parameters import ema_weights


def sample_grid_labels(pipe, num_images):
    """(count, class labels, row titles) of a run's sample grid: ``num_images`` unlabelled images for an
    unconditional model; for a conditional one a row per class of max(1, num_images // K) images."""
    from ..sampling import class_rows

    labels, titles = class_rows(pipe, None, 1)
    if labels is None:
        return num_images, None, None
    labels, titles = class_rows(pipe, None, max(1, num_images // len(labels)))
    return len(labels), labels, titles


def _pipeline(config, unet, noise_scheduler):
    """The pipeline of ``unet``; for a class-conditional run with the class names (id2label), the null class id (K,
    the UNet's last class embedding) and the default guidance scale (None: the pipelines' own), which
    model_index.json records."""
    from ..pipeline_ddpm_hf import DDPMHFPipeline
    from ..scheduling_ddpm_hf import DDPMHFScheduler

    classes = {}
    if config.class_conditional:
        classes = dict(id2label=dict(enumerate(config.class_names)), null_class_id=len(config.class_names),
                       guidance_scale=config.guidance_scale)
    pipe = DDPMHFPipeline(unet=unet, scheduler=DDPMHFScheduler.from_config(noise_scheduler.config), **classes)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(run, make_pipeline=None, folder=None):
    """The pipeline of ``run`` (a registered ``lifecycle.Run``; EMA weights if on) at ``folder`` (default
    ``output_dir``). Written beside the run first and moved in when complete: a failed write (disk full) leaves the
    pipeline saved before it (if any) as it was and raises RunError. ``make_pipeline(unet)``: the pipeline to save
    (default: the training run's DDPM pipeline; a distillation run gives its student's)."""
    config, model = run.config, run.model
    folder = folder or config.output_dir
    tmp = os.path.join(config.output_dir, PIPELINE_TMP)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with ema_weights(model, run.flat, run.ema) as unet:
            pipe = make_pipeline(unet) if make_pipeline else _pipeline(config, unet, run.noise_scheduler)
            pipe.save_pretrained(tmp)
    except Exception as error:  # noqa: BLE001 - reported with the file it was writing
        failure = write_error("the pipeline", tmp, error, config.output_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise failure from error
    finally:
        model.train()
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(tmp):
        target = os.path.join(folder, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, name), target)
    os.rmdir(tmp)


def save_samples(run, epoch, step):
    """A sample grid of ``run``'s EMA weights at the end of ``epoch`` in samples-epochN/ (and the tracker); a
    class-conditional run draws one labelled row per class at the pipeline's default guidance scale."""
    from ..sampling import generate, write_samples

    config, model = run.config, run.model
    with ema_weights(model, run.flat, run.ema) as unet:
        pipe = _pipeline(config, unet, run.noise_scheduler)
        count, labels, titles = sample_grid_labels(pipe, config.num_sample_images)
        images, _ = generate(pipe, count, config.eval_batch_size, config.ddpm_num_inference_steps, config.seed,
                             class_labels=labels)
        pictures = write_samples(pipe, images, os.path.join(config.output_dir, f"samples-epoch{epoch}"),
                                 f"epoch {epoch}, {config.ddpm_num_inference_steps} steps", row_labels=titles)
    model.train()
    log_pictures(run.accelerator, config, pictures, step)


def log_pictures(accelerator, config, pictures, step):
    """The sample grid and denoising strip as tracker images (tags samples/grid, samples/strip)."""
    if config.logger == "tensorboard":
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        for name, picture in pictures.items():
            writer.add_image(f"samples/{name}", np.asarray(picture.convert("RGB")), step, dataformats="HWC")
    elif config.logger == "wandb":
        accelerator.get_tracker("wandb").log_images(
            {f"samples/{name}": [np.asarray(picture.convert("RGB"))] for name, picture in pictures.items()}, step=step)


def finish(run, history, metrics):
    """The main process's outputs at the end of ``run``: the pipeline, the final samples and strip, the loss plot,
    metrics.json, the model card and the upload. Raises PushFailed (after everything is saved) if the upload fails."""
    from ..images import save_loss_plot
    from ..hub import push_failed, push_run
    from ..model_card import write_model_card
    from ..pipeline_ddpm_hf import DDPMHFPipeline
    from ..sampling import generate, write_samples

    config, accelerator, step = run.config, run.accelerator, metrics["steps"]
    save_pipeline(run)
    pipe = DDPMHFPipeline.from_pretrained(config.output_dir).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    sample_start = time.time()
    count, labels, titles = sample_grid_labels(pipe, config.num_sample_images)  # conditional: a row per class
    images, strip = generate(pipe, count, config.eval_batch_size, config.ddpm_num_inference_steps, config.seed,
                             strip=True, class_labels=labels)
    metrics["sampling_seconds"] = round(time.time() - sample_start, 1)
    name = os.path.basename(os.path.normpath(config.dataset_name or config.train_data_dir or "digits"))
    title = f"{name}: {step} steps, {config.ddpm_num_inference_steps} sampling steps{', EMA' if run.ema else ''}"
    pictures = write_samples(pipe, images, os.path.join(config.output_dir, "samples"), title, strip,
                             row_labels=titles)
    log_pictures(accelerator, config, pictures, step)
    save_loss_plot(history, os.path.join(config.output_dir, "loss.png"), f"{name} training loss")
    write_metrics(config.output_dir, metrics)
    # README.md and images/; the run's weights changed, so a card edited before a resume is rendered anew
    write_model_card(config.output_dir, repo_id=config.hub_model_id, replace_edited_card=True)
    if config.push_to_hub:
        try:
            push_run(config.output_dir, config.hub_model_id, private=config.hub_private_repo,
                     token=config.hub_token, revision=config.hub_revision)
        except Exception as error:  # the run is saved: say how to upload it without training again
            return push_failed(error, config.output_dir, config.hub_model_id, config.hub_private_repo,
                               config.hub_revision, config.hub_token)
    return None

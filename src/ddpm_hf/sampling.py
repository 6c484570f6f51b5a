"""Loading a saved pipeline, choosing its sampler, drawing samples from it and writing them for people: one PNG per
image, a labelled upscaled grid (one labelled row per class for a class-conditional model) and a denoising strip.

numpy, torch and diffusers are imported where used: the command line reads ``SCHEDULERS`` while building its parser.
"""

import os

from .errors import BadArgument, ModelNotFound
from .run_dir import MODEL_INDEX

# Sampler names (the CLI's --scheduler) -> (scheduler class, config overrides). "ddpm" is ddpm-hf's own ancestral
# DDPMHFScheduler (Ho Alg. 2, learned variances used); the others are diffusers' schedulers made from the model's
# scheduler config with from_config, as diffusers' docs swap them.
SCHEDULERS = {
    "ddpm": ("DDPMHFScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsolver-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}


def unet_calls(sampler, steps):
    """UNet evaluations of one sample with the sampler called ``sampler`` (a name of ``SCHEDULERS``) over ``steps``
    steps: one per step, 2N - 1 for Heun's N steps (diffusers' HeunDiscreteScheduler)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def make_scheduler(name, config):
    """The scheduler called ``name`` in ``SCHEDULERS``, made with ``from_config(config)`` (a scheduler's config, e.g.
    ``pipe.scheduler.config``); BadArgument("scheduler") for a name not in it."""
    if name not in SCHEDULERS:
        raise BadArgument("scheduler", f"scheduler {name!r}: choose from {', '.join(SCHEDULERS)}")
    class_name, overrides = SCHEDULERS[name]
    if class_name == "DDPMHFScheduler":
        from .scheduling_ddpm_hf import DDPMHFScheduler as cls
    else:
        import inspect

        import diffusers

        cls = getattr(diffusers, class_name)
        if "variance_type" in inspect.signature(cls.__init__).parameters:
            # the pipelines hand this scheduler the prediction channels only (denoise): its own learned-variance cut,
            # model_output[:, :3], would truncate the prediction of a model with more than 3 channels
            overrides = {**overrides, "variance_type": None}
    return cls.from_config(config, **overrides)


def use_scheduler(pipe, name):
    """Swap the sampler of ``pipe`` to the one called ``name`` (see ``make_scheduler``), in place; returns pipe."""
    if name is not None:
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    return pipe


def class_rows(pipe, class_labels, per_class):
    """The per-image class labels of a grid with one row of ``per_class`` images per class, and the row titles.

    Args:
        class_labels: ids or names (see ``DDPMHFPipeline.get_label_ids``), or None: every class of a conditional
            model (its ids but the null one), and no labels for an unconditional model. A string is a class name when
            the model has a class of that name (an image folder's sub-folder "10"), else an id if made of digits.
    Returns:
        (labels, titles): a list of len(classes) * per_class ids (or None) and one "id: name" title per class (or
        None).
    """
    if class_labels is None and getattr(pipe.unet.config, "num_class_embeds", None) is None:
        return None, None
    classes = pipe.class_id_choices() if class_labels is None else list(class_labels)
    ids = [label_id(pipe, c) for c in classes]
    names = dict(getattr(pipe.config, "id2label", None) or {})
    titles = [f"{i}: {names[i]}" if names.get(i, str(i)) != str(i) else str(i) for i in ids]
    return [i for i in ids for _ in range(per_class)], titles


def label_id(pipe, label):
    """The class id of ``label`` (an int, or a string from the command line): a string that is one of the model's
    class names is that class, even when made of digits (an image folder's sub-folder "10"), else an id if made of
    digits, else a name (``DDPMHFPipeline.get_label_ids`` raises ValueError naming the known ones)."""
    if not isinstance(label, str):
        return int(label)
    known = pipe.labels  # {name: id}
    return known[label] if label in known else int(label) if label.isdigit() else pipe.get_label_ids(label)[0]


def load_pipeline(cls, model, **kwargs):
    """``cls.from_pretrained(model, **kwargs)`` for a folder written by save_pretrained or a Hub repo id; raises
    ModelNotFound naming what is wrong with the folder and the fix."""
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, MODEL_INDEX)):
        raise ModelNotFound(f"{model} is not a model folder: no model_index.json in it. Give a folder written by "
                            "save_pretrained or `ddpm-hf train` (model_index.json, unet/, scheduler/), or a Hub "
                            "repo id")
    if not os.path.isdir(model) and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise ModelNotFound(f"{model}: no such folder (nor a Hub repo id namespace/name)")
    try:
        return cls.from_pretrained(model, **kwargs)
    except Exception as error:  # noqa: BLE001 - a damaged or foreign folder, a missing repo: one clear line
        detail = str(error).strip().splitlines()[0][:400] if str(error).strip() else ""
        raise ModelNotFound(
            f"cannot load the pipeline {model} ({type(error).__name__}: {detail}). It needs model_index.json, "
            "unet/config.json with unet/diffusion_pytorch_model.safetensors of the same shapes, and "
            "scheduler/scheduler_config.json: save it again (or download it again), or give another folder or repo "
            "id") from error


def generate(pipe, num_images, batch_size, num_inference_steps, seed, strip=False, columns=10, rows=8,
             class_labels=None, guidance_scale=None, eta=0.0):
    """Images (N, H, W, C) in [0, 1]; image i is drawn with its own generator seeded seed + i, so the result does
    not depend on the batch size. With ``strip``, also ``(states, labels)``: the first ``rows`` images of the first
    batch at ``columns`` evenly spaced points of the chain, recorded by a step callback (the chain is not kept).
    ``class_labels``: one class id per image (N of them) for a class-conditional model, with ``guidance_scale``
    (None: the pipeline's default). ``eta``: DDIM's eta, for a scheduler whose step takes it (0: leave it out)."""
    import numpy as np
    import torch

    steps = num_inference_steps or pipe.scheduler.config.num_train_timesteps
    options = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    if eta:
        options["eta"] = eta
    images, states, labels = [], [], []

    def record(p, i, t, tensors):
        timesteps = p.scheduler.timesteps.tolist()
        picks = set(np.linspace(0, len(timesteps) - 1, min(columns, len(timesteps))).round().astype(int).tolist())
        if i in picks:  # the state after step i is x at the next timestep (x_0 after the last step)
            states.append(p._to_output(tensors["image"][:rows], "np"))
            labels.append(f"t={timesteps[i + 1]}" if i + 1 < len(timesteps) else "x_0")
        return {}

    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(n)]
        callback = record if strip and start == 0 else None
        classes = None if class_labels is None else list(class_labels[start:start + n])
        out = pipe(batch_size=n, generator=generators, num_inference_steps=steps, output_type="np",
                   callback_on_step_end=callback, class_labels=classes, **options)
        images.append(out.images)
    return np.concatenate(images), ((states, labels) if strip else None)


def balanced_labels(pipe, num_images):
    """For a class-conditional pipeline, ``num_images`` class ids cycling through every class (0, 1, ..., K-1, 0,
    ...), so that a sample metric sees the classes equally often; None for an unconditional pipeline."""
    labels, _ = class_rows(pipe, None, 1)
    return None if labels is None else [labels[i % len(labels)] for i in range(num_images)]


def generate_uint8(pipe, num_images, batch_size, num_inference_steps, seed, class_labels=None, guidance_scale=None):
    """``generate`` as uint8 tensors (N, C, H, W) in 0..255, the form the sample metrics take, and the seconds it
    took."""
    import time

    import torch

    from .images import to_uint8

    start = time.time()
    images, _ = generate(pipe, num_images, batch_size, num_inference_steps, seed, class_labels=class_labels,
                         guidance_scale=guidance_scale)
    seconds = time.time() - start
    return torch.from_numpy(to_uint8(images).transpose(0, 3, 1, 2).copy()), seconds


def write_samples(pipe, images, output_dir, title, strip=None, row_labels=None):
    """One PNG per image (native resolution), grid.png (upscaled, labelled) and, given ``(states, labels)`` from
    ``generate``, strip.png. ``row_labels``: one title per grid row (the images split evenly into the rows, e.g. one
    row per class). Returns the pictures written, {"grid": PIL image, "strip": PIL image (with strip)}."""
    from .images import make_grid, make_strip

    os.makedirs(output_dir, exist_ok=True)
    for i, image in enumerate(pipe.numpy_to_pil(images)):
        image.save(os.path.join(output_dir, f"sample_{i:04d}.png"))
    nrow = len(images) // len(row_labels) if row_labels else None
    pictures = {"grid": make_grid(images, nrow=nrow, title=title, row_labels=row_labels)}
    if strip is not None:
        pictures["strip"] = make_strip(*strip, title=title + "\ndenoising x_T -> x_0")
    for name, picture in pictures.items():
        picture.save(os.path.join(output_dir, f"{name}.png"))
    return pictures

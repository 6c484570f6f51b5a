"""Loading a saved pipeline, drawing samples from it and writing them for people: one PNG per image, a labelled
upscaled grid and a denoising strip."""

import os

import numpy as np
import torch

from .errors import ModelNotFound
from .run_dir import MODEL_INDEX


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


def generate(pipe, num_images, batch_size, num_inference_steps, seed, strip=False, columns=10, rows=8):
    """Images (N, H, W, C) in [0, 1]; image i is drawn with its own generator seeded seed + i, so the result does
    not depend on the batch size. With ``strip``, also ``(states, labels)``: the first ``rows`` images of the first
    batch at ``columns`` evenly spaced points of the chain, recorded by a step callback (the chain is not kept)."""
    steps = num_inference_steps or pipe.scheduler.config.num_train_timesteps
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
        out = pipe(batch_size=n, generator=generators, num_inference_steps=steps, output_type="np",
                   callback_on_step_end=callback)
        images.append(out.images)
    return np.concatenate(images), ((states, labels) if strip else None)


def generate_uint8(pipe, num_images, batch_size, num_inference_steps, seed):
    """``generate`` as uint8 tensors (N, C, H, W) in 0..255, the form the sample metrics take, and the seconds it
    took."""
    import time

    from .images import to_uint8

    start = time.time()
    images, _ = generate(pipe, num_images, batch_size, num_inference_steps, seed)
    seconds = time.time() - start
    return torch.from_numpy(to_uint8(images).transpose(0, 3, 1, 2).copy()), seconds


def write_samples(pipe, images, output_dir, title, strip=None):
    """One PNG per image (native resolution), grid.png (upscaled, labelled) and, given ``(states, labels)`` from
    ``generate``, strip.png. Returns the pictures written, {"grid": PIL image, "strip": PIL image (with strip)}."""
    from .images import make_grid, make_strip

    os.makedirs(output_dir, exist_ok=True)
    for i, image in enumerate(pipe.numpy_to_pil(images)):
        image.save(os.path.join(output_dir, f"sample_{i:04d}.png"))
    pictures = {"grid": make_grid(images, title=title)}
    if strip is not None:
        pictures["strip"] = make_strip(*strip, title=title + "\ndenoising x_T -> x_0")
    for name, picture in pictures.items():
        picture.save(os.path.join(output_dir, f"{name}.png"))
    return pictures

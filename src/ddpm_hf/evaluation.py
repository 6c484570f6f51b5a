"""Held-out bits/dim during and after training: the full T-step variational bound (Ho eq. 5) of uint8 images, split
across processes and gathered."""

import math

import torch


def held_out_bits(unet, scheduler, images, batch_size, seed, progress=False):
    """Per-image bits/dim of uint8 images (N, C, H, W) under the full T-step bound (Ho eq. 5), as a (N, 3) float64
    tensor of [total, prior term, decoder term]."""
    from .data import to_model_range
    from .likelihood import bits_per_dim

    rows = []
    g = torch.Generator().manual_seed(seed)
    device = next(unet.parameters()).device
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start : start + batch_size]).to(device)
        r = bits_per_dim(unet, scheduler, x, generator=g, progress=progress)
        rows.append(torch.stack([r.total, r.prior, r.decoder], 1).double().cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)


def summarize_bits(terms):
    """Mean bits/dim, its standard error and the mean prior and decoder terms of ``held_out_bits`` rows."""
    total = terms[:, 0]
    return {
        "bits_per_dim": total.mean().item(),
        "bits_per_dim_stderr": (total.std() / math.sqrt(len(total))).item() if len(total) > 1 else 0.0,
        "prior_bits_per_dim": terms[:, 1].mean().item(),
        "decoder_bits_per_dim": terms[:, 2].mean().item(),
        "num_images": len(total),
    }


def evaluate_bits_per_dim(unet, scheduler, held_out, batch_size, seed, progress):
    """Mean bits/dim of the held-out images under the full T-step bound (Ho eq. 5), with its terms (one process)."""
    return summarize_bits(held_out_bits(unet, scheduler, held_out, batch_size, seed, progress))


def evaluate_on_all_ranks(accelerator, unet, scheduler, held_out, batch_size, seed):
    """``evaluate_bits_per_dim`` split across processes: rank r scores every world-th image from r (with its own
    noise seed) and the rows are gathered, so no rank idles, or times out in a collective, while one evaluates."""
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    terms = held_out_bits(unet, scheduler, held_out[rank::world], batch_size, seed + rank,
                          progress=accelerator.is_local_main_process)
    return summarize_bits(torch.cat(gather_object([terms])))

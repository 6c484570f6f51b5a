"""Held-out bits/dim during and after training: the full T-step variational bound (Ho eq. 5) of uint8 images, or a
stratified estimate from some of its terms, split across processes and gathered."""

import math

import torch

from ..errors import BadArgument


def held_out_bits(unet, scheduler, images, batch_size, seed, progress=False, per_timestep=False, labels=None,
                  should_stop=None):
    """Per-image bits/dim of uint8 images (N, C, H, W) under the full T-step bound (Ho eq. 5), as a (N, 3) float64
    tensor of [total, prior term, decoder term]; with ``per_timestep`` also the mean term L_{t-1} of each code
    timestep t = 0..T-1, a (T,) tensor in bits/dim. ``labels``: the images' class ids (N,) for a class-conditional
    model (the conditional bound, on -log p(x | y)). ``should_stop``: see ``likelihood.bits_per_dim`` (raises
    ``BoundStopped``)."""
    from ..data import to_model_range
    from ..likelihood import bits_per_dim

    rows, terms_sum = [], 0.0
    g = torch.Generator().manual_seed(seed)
    device = next(unet.parameters()).device
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start : start + batch_size]).to(device)
        y = None if labels is None else labels[start : start + batch_size].to(device)
        r = bits_per_dim(unet, scheduler, x, generator=g, progress=progress, class_labels=y, should_stop=should_stop)
        rows.append(torch.stack([r.total, r.prior, r.decoder], 1).double().cpu())
        terms_sum = terms_sum + r.terms.sum(dim=0)
    rows = torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)
    return (rows, terms_sum / max(len(rows), 1)) if per_timestep else rows


@torch.no_grad()
def stratified_bits(unet, scheduler, images, batch_size, seed, num_timesteps, progress=False, labels=None,
                    should_stop=None):
    """An unbiased estimate of the bound (Ho eq. 5) from ``num_timesteps`` of its T terms per image: the decoder
    L_0 exactly, and the T - 1 KL terms by stratified sampling (1..T-1 cut into ``num_timesteps - 1`` equal strata, one
    uniform t per stratum and image, each term weighted by its stratum's size). Independent draws per image make the
    per-image estimates independent, so their standard error covers both image and timestep sampling.

    Returns ((N, 3) float64 rows [total, prior, decoder] as ``held_out_bits``, the strata's (start, end) bounds, and
    the (K-1,) mean per-timestep term of each stratum in bits/dim, for the plot). ``labels``: as in
    ``held_out_bits``. ``should_stop``: as in ``held_out_bits``."""
    from tqdm.auto import tqdm

    from ..data import to_model_range
    from ..likelihood import LOG2, BoundStopped, as_ddpm_hf, prior_kl, vlb_term_at

    scheduler = as_ddpm_hf(scheduler)
    T = scheduler.config.num_train_timesteps
    if not 2 <= num_timesteps <= T:
        raise BadArgument("bpd_timesteps", f"bpd_timesteps must be in [2, {T}], got {num_timesteps}")
    edges = torch.linspace(1, T, num_timesteps).round().long()  # K - 1 strata [edges[j], edges[j+1])
    strata = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    g = torch.Generator().manual_seed(seed)
    device = next(unet.parameters()).device
    rows, strata_sum = [], torch.zeros(len(strata), dtype=torch.float64)
    with tqdm(total=len(images) * (len(strata) + 1), desc="bits/dim estimate", disable=not progress,
              leave=False) as bar:
        for start in range(0, len(images), batch_size):
            x = to_model_range(images[start : start + batch_size]).to(device)
            scale = 1.0 / (x[0].numel() * LOG2)
            b = x.shape[0]
            y = None if labels is None else labels[start : start + batch_size].to(device)

            def term(t):  # L_{t-1} per image, in nats, at code timesteps t (B,)
                if should_stop is not None and should_stop():
                    raise BoundStopped("stopped during the bound's estimate")
                bar.update(b)
                return vlb_term_at(unet, scheduler, x, t, g, y)

            decoder = term(torch.zeros(b, dtype=torch.long, device=device)) * scale
            prior = prior_kl(scheduler, x).double().cpu() * scale  # L_T, exact
            total = prior + decoder
            for j, (lo, hi) in enumerate(strata):
                t = torch.randint(lo, hi, (b,), generator=g).to(device)
                value = term(t) * scale
                strata_sum[j] += value.sum()
                total = total + (hi - lo) * value
            rows.append(torch.stack([total, prior, decoder], 1))
    rows = torch.cat(rows)
    return rows, strata, strata_sum / len(rows)


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


def evaluate_on_all_ranks(accelerator, unet, scheduler, held_out, batch_size, seed, bpd_timesteps=None, labels=None,
                          should_stop=None):
    """``evaluate_bits_per_dim`` split across processes: rank r scores every world-th image from r (with its own
    noise seed) and the rows are gathered, so no rank idles, or times out in a collective, while one evaluates.
    With ``bpd_timesteps``, the stratified estimate (``stratified_bits``) instead of all T terms. ``labels``: the
    held-out images' class ids (M,) for a class-conditional model (the conditional bound).

    ``should_stop``: a callable each rank asks before every term (a training run's signal flag); a rank it stops
    skips the rest of its share, and None is returned on every rank when any rank stopped. No collective runs per
    term: the ranks meet only in the final gather, so a rank not signalled finishes its share first (a preemption
    signals every rank: torchrun forwards SIGTERM to all workers)."""
    from accelerate.utils import gather_object

    from ..likelihood import BoundStopped

    rank, world = accelerator.process_index, accelerator.num_processes
    mine, progress = held_out[rank::world], accelerator.is_local_main_process
    my_labels = None if labels is None else labels[rank::world]
    try:
        if bpd_timesteps and bpd_timesteps < scheduler.config.num_train_timesteps:
            terms = stratified_bits(unet, scheduler, mine, batch_size, seed + rank, bpd_timesteps, progress,
                                    labels=my_labels, should_stop=should_stop)[0]
        else:
            terms = held_out_bits(unet, scheduler, mine, batch_size, seed + rank, progress=progress,
                                  labels=my_labels, should_stop=should_stop)
    except BoundStopped:
        terms = None
    gathered = gather_object([terms])
    if any(t is None for t in gathered):
        return None
    return summarize_bits(torch.cat(gathered))

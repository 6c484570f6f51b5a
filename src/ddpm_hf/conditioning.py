"""Class conditioning (Ho & Salimans 2022, classifier-free diffusion guidance): the "no label" (null) class of a
conditional UNet2DModel and the label dropout that trains it.

A conditional model is a ``UNet2DModel`` with ``num_class_embeds = K + 1`` for K classes: ids 0..K-1 are the classes,
id K (``null_class_id``) is the null class, the unconditional model eps(x_t) of the same network. The id lives in the
saved configs (the UNet's num_class_embeds, model_index.json's null_class_id), never as a constant in code.
"""

import contextlib

import torch


def null_class_id(unet):
    """The null class id of a conditional UNet2DModel (num_class_embeds - 1), or None for an unconditional one."""
    n = getattr(unet.config, "num_class_embeds", None)
    return None if n is None else n - 1


def drop_labels(labels, null_id, prob, generator):
    """Ho & Salimans 2022, Algorithm 1 line 3: each label replaced by the null class with probability ``prob``
    (p_uncond) so that one network learns eps(x_t, c) and eps(x_t). ``labels``: (B,) long class ids; the B uniforms
    come from ``generator`` (CPU), so the drops are seeded like the rest of the micro-batch. Returns (B,) long."""
    drop = torch.rand(labels.shape[0], generator=generator) < prob
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_id), labels)


@contextlib.contextmanager
def default_class_labels(unet, class_id):
    """Within the block, calls of ``unet`` that give no ``class_labels`` get ``class_id`` for every image (a forward
    pre-hook, removed on exit). Lets code that calls a conditional UNet without labels (a sampler that does not take
    them yet, periodic sample grids) draw from class ``class_id``, e.g. the null class: the unconditional model.
    With ``class_id`` None (an unconditional UNet) nothing changes."""
    if class_id is None:
        yield unet
        return

    def hook(_module, args, kwargs):
        if kwargs.get("class_labels") is None and (len(args) < 3 or args[2] is None):
            sample = args[0] if args else kwargs["sample"]
            kwargs["class_labels"] = torch.full((sample.shape[0],), class_id, dtype=torch.long, device=sample.device)
            args = args[:2]
        return args, kwargs

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield unet
    finally:
        handle.remove()

"""The training parameters as views into one flat buffer, so that fused AdamW, gradient clipping and the EMA each run
one op over one tensor; and moving the EMA's flat copy in and out of the UNet."""

import torch


def flatten_parameters(module):
    """Make every trainable parameter of ``module`` a view into one contiguous buffer and its gradient a view into a
    second one; returns that buffer as one ``nn.Parameter`` whose ``.grad`` is the flat gradient.

    The optimizer, gradient clipping and the EMA then each run one op over one tensor instead of a loop over the
    module's tensors (268 for cpu-8). Backward accumulates into the existing gradient views in place, so gradients
    must be cleared with ``flat.grad.zero_()``, never set to None. Call it after moving the module to its device."""
    params = [p for p in module.parameters() if p.requires_grad]
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    return view_parameters(module, flat)


def view_parameters(module, flat):
    """Make ``module``'s trainable parameters views into ``flat`` (and their gradients views into ``flat.grad``)
    again, taking each parameter's current value, as ``flatten_parameters`` laid them out; returns ``flat``.

    Needed after ``accelerator.prepare`` in a multi-process CPU run: wrapping the module in DistributedDataParallel
    gives its parameters new storage (measured: torchrun with 2 processes), after which backward fills gradients
    the flat buffer never sees and the optimizer steps on zeros."""
    offset = 0
    for p in (p for p in module.parameters() if p.requires_grad):
        n = p.numel()
        view = flat.data[offset : offset + n].view_as(p)
        if p.data.data_ptr() != view.data_ptr():
            view.copy_(p.data)
            p.data = view
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"the module's trainable parameters hold {offset} values, the flat buffer {flat.numel()}")
    return flat


class ema_weights:
    """Context: the bare UNet in eval mode holding the EMA weights (restored on exit); ``flat`` is the buffer its
    parameters are views of."""

    def __init__(self, model, flat, ema):
        self.model, self.flat, self.ema = model, flat, ema

    def __enter__(self):
        if self.ema is not None:
            self.ema.store([self.flat])
            self.ema.copy_to([self.flat])
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore([self.flat])
        return False


def module_with_weights(model, vector):
    """A fresh copy of ``model`` (same class and config) whose parameters are ``vector`` (a flat buffer laid out as
    ``flatten_parameters`` lays it out), as separate tensors: what a checkpoint or pipeline saves."""
    copy = type(model).from_config(model.config)
    torch.nn.utils.vector_to_parameters(vector.detach().to(copy.dtype), copy.parameters())
    return copy

# Copyright 2026 The ddpm-hf authors. Licensed under the Apache License, Version 2.0.
"""The model call of every ddpm-hf pipeline at one reverse step, as any diffusers scheduler wants it: the
learned-variance channels kept or split off, classifier-free guidance (Ho & Salimans 2022) for class-conditional
UNets in one batched call, class labels checked and resolved, and the scheduler's extra step arguments.

Shipped with the pipelines (``DDPMHFPipeline.save_pretrained`` copies it beside ``pipeline_ddpm_hf.py``, which
imports it relatively; diffusers' remote-code loader follows that import): torch and diffusers only. No
``DiffusionPipeline`` subclass lives here.
"""

import inspect
import logging

import torch

# The pipelines' default classifier-free guidance scale s (diffusers' convention, 1 = no guidance), measured on the
# class-conditional digits (the digits recipe's 1400 steps, 3 training seeds, 1,000 samples per scale, UniPC 10 steps;
# BENCHMARKS.md "Class-conditional digits"): every seed's samples are recognised as the requested digit >= 95% of the
# time (s = 1.25: 98.7%; s = 1: 95.0%, one seed 94.8%; s = 1.5: 99.4%) and its digits FD is the lowest measured and no
# worse than the unconditional model's (s = 1.25: 1.68 +- 0.04; s = 1: 1.78; s = 1.5: 1.88; s = 2: 2.57; floor 1.39;
# the unconditional run 1.71 +- 0.06).
DEFAULT_GUIDANCE_SCALE = 1.25
# Schedulers (by class name, also for subclasses) whose step models the reverse-step variance and so takes a model
# output with the variance channels when their variance_type is learned; every other scheduler gets the prediction
# channels only (diffusers' DPMSolverMultistepScheduler would cut at [:, :3], wrong for one-channel models).
VARIANCE_SCHEDULERS = ("DDPMHFScheduler", "DDPMScheduler")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


def keeps_variance_channels(scheduler):
    """Whether ``scheduler.step`` takes the model's variance channels (Nichol & Dhariwal sec. 3.1): one of
    ``VARIANCE_SCHEDULERS`` with a learned ``variance_type``."""
    names = {cls.__name__ for cls in type(scheduler).__mro__}
    learned = getattr(scheduler.config, "variance_type", None) in LEARNED_VARIANCE_TYPES
    return learned and any(name in names for name in VARIANCE_SCHEDULERS)


def step_kwargs(scheduler, generator=None, eta=0.0):
    """The extra keyword arguments ``scheduler.step`` accepts, as diffusers' pipelines choose them
    (``prepare_extra_step_kwargs``): ``generator`` and ``eta`` (DDIM's eta, Song et al. 2021 eq. 16) when its
    signature has them."""
    parameters = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "generator" in parameters:
        kwargs["generator"] = generator
    if "eta" in parameters:
        kwargs["eta"] = eta
    return kwargs


def check_scheduler_input(scheduler, timesteps):
    """A scheduler that cannot set explicit ``timesteps``: ValueError naming it (diffusers raises a TypeError)."""
    if timesteps is not None and "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(f"{type(scheduler).__name__}.set_timesteps takes no explicit timesteps: give "
                         "num_inference_steps instead")


# ------------------------------------------------------------------------------------------------ class labels


def label_names(id2label):
    """{name: id} of a pipeline's ``id2label`` ({id: name}); a name holding commas gives each of its comma-separated
    parts, as diffusers' DiT pipeline reads ImageNet's names."""
    names = {}
    for key, value in (id2label or {}).items():
        for name in str(value).split(","):
            names[name.strip()] = int(key)
    return dict(sorted(names.items()))


def get_label_ids(label, id2label):
    """Class ids of label names (a name or a list of names), as diffusers' DiT pipeline ``get_label_ids``; ValueError
    naming the known names for one that is not known."""
    names = label_names(id2label)
    labels = [label] if isinstance(label, str) else list(label)
    unknown = [name for name in labels if name not in names]
    if unknown:
        raise ValueError(f"class label names {unknown} are not known; this model's are {list(names)}")
    return [names[name] for name in labels]


def class_ids(unet, class_labels, id2label, null_class_id, batch_size, num_labels=None):
    """The class ids (a list of ints, one per image) a call samples, or None for an unconditional UNet.

    Args:
        unet: a ``UNet2DModel``; class-conditional when its ``num_class_embeds`` is set.
        class_labels: None, or one label per image: ids (int) or names (str, see ``get_label_ids``), mixed freely.
        id2label: {id: name} or None. null_class_id: the "no label" id (Ho & Salimans 2022) or None.
        batch_size: the images asked for, or None (then ``len(class_labels)``, or 1 without labels).
        num_labels: the classes a caller may ask for, ids 0..num_labels - 1 (default: every id of the class
            embedding but the null one; a guidance-grid student's embedding holds more, ``guided_class_ids``).

    Without ``class_labels`` a conditional model samples the null class (unconditional samples). ValueError for
    class labels given to an unconditional model, an id out of 0..num_class_embeds - 1 or the null id itself, an
    unknown name, a ``batch_size`` that is not the number of labels, and a conditional UNet without a null class id
    asked for unconditional samples.
    """
    num_classes = getattr(unet.config, "num_class_embeds", None)
    if num_classes is None:
        if class_labels is not None:
            raise ValueError("class_labels given, but this UNet is unconditional (its config has no num_class_embeds)")
        return None
    if class_labels is None:
        if null_class_id is None:
            raise ValueError("this UNet is class-conditional but the pipeline has no null_class_id: give class_labels")
        # (a batch_size that is not a positive int is the caller's check_inputs' to refuse)
        return [int(null_class_id)] * (batch_size if isinstance(batch_size, int) and batch_size > 0 else 1)
    if torch.is_tensor(class_labels):  # a 0-d tensor too (one label)
        labels = class_labels.flatten().tolist()
    else:
        labels = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
    if not labels:
        raise ValueError("class_labels is empty: give one label per image")
    if batch_size is not None and batch_size != len(labels):
        raise ValueError(f"{len(labels)} class_labels for batch_size {batch_size}: give one label per image (or leave "
                         "batch_size out)")
    ids = [get_label_ids(label, id2label)[0] if isinstance(label, str) else int(label) for label in labels]
    valid = [i for i in range(num_classes if num_labels is None else num_labels) if i != null_class_id]
    bad = [i for i in ids if i not in valid]
    if bad:
        raise ValueError(f"class ids {bad} out of range: this model's classes are {valid[0]}..{valid[-1]}"
                         + (f" (the null class {null_class_id} is drawn by giving no class_labels)"
                            if null_class_id is not None else ""))
    return ids


def guided_class_ids(labels, guidance_scale, guidance_scales, null_class_id):
    """The class-embedding ids of a student with its guidance scale as an input (``ddpm-hf distill`` of a
    class-conditional teacher, after Meng et al. 2023, "On distillation of guided diffusion models", on a grid of
    scales): class c at the grid's j-th scale is id c M + j (M = len(guidance_scales)); the null class (unconditional
    samples) stays ``null_class_id`` = K M. ValueError for a scale not on the grid.

    Args:
        labels: (B,) long tensor of class ids in 0..K-1 or the null id. guidance_scale: s, one of guidance_scales.
    """
    j = guidance_index(guidance_scale, guidance_scales)
    return torch.where(labels == null_class_id, labels, labels * len(guidance_scales) + j)


GUIDANCE_TOLERANCE = 1e-6  # two guidance scales closer than this are the same scale


def guidance_index(guidance_scale, guidance_scales):
    """j, the position of ``guidance_scale`` on a student's grid ``guidance_scales`` (within ``GUIDANCE_TOLERANCE``);
    ValueError naming the grid for a scale off it."""
    matches = [j for j, w in enumerate(guidance_scales) if abs(float(w) - float(guidance_scale)) < GUIDANCE_TOLERANCE]
    if not matches:
        raise ValueError(f"guidance_scale {guidance_scale}: this student learned its teacher's guidance at the scales "
                         f"{list(guidance_scales)} only; pass one of them")
    return matches[0]


# ------------------------------------------------------------------------------------------------ the model call


def denoise(unet, x, t, labels=None, null_class_id=None, guidance_scale=1.0, keep_variance=False):
    """The UNet's output at (x, t) for the scheduler's step.

    Classifier-free guidance (Ho & Salimans 2022, eq. 6 with w = s - 1, in diffusers' convention):
    eps = eps(x, null) + s (eps(x, c) - eps(x, null)), so s = 1 is the conditional model alone and s = 0 the
    unconditional one. The two branches are one UNet call on the doubled batch [x, x] with labels [c, null]. The
    combination acts on the prediction channels only; learned-variance channels come from the conditional branch
    (as GLIDE and DiT do). Prediction types other than eps (x_0, v) are combined in the same way: both are affine
    in eps with the same coefficients at a given x_t, and the weights (1 - s, s) sum to one, so this is guidance on
    eps.

    Args:
        unet: a ``UNet2DModel`` (C in, C or 2C out). x: (B, C, H, W) the scaled model input. t: the timestep, or
            (B,) timesteps, one per image.
        labels: (B,) long tensor of class ids, or None for an unconditional UNet.
        null_class_id: the "no label" id (needed when guidance_scale != 1).
        guidance_scale: s, a number or a (B,) tensor of one scale per image.
        keep_variance: keep the variance channels (``keeps_variance_channels(scheduler)``); otherwise the output
            has C channels.

    Returns:
        (B, C, H, W), or (B, 2C, H, W) with ``keep_variance`` and a learned-variance UNet.
    """
    channels = x.shape[1]
    per_image = torch.is_tensor(guidance_scale) and guidance_scale.ndim > 0
    if labels is None:
        output = unet(x, t).sample
    elif (not per_image and guidance_scale == 1) or bool((labels == null_class_id).all()):
        output = unet(x, t, class_labels=labels).sample
    else:
        tt = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim == 1 and len(t) > 1 else t  # one t per image
        both = unet(torch.cat([x, x]), tt, class_labels=torch.cat([labels, torch.full_like(labels, null_class_id)]))
        conditional, unconditional = both.sample.chunk(2)
        cond, uncond = conditional[:, :channels], unconditional[:, :channels]
        if per_image:
            guidance_scale = guidance_scale.to(cond.device, cond.dtype).view(-1, *([1] * (cond.ndim - 1)))
        guided = uncond + guidance_scale * (cond - uncond)  # Ho & Salimans eq. 6, w = s - 1
        output = torch.cat([guided, conditional[:, channels:]], dim=1)
    return output if keep_variance else output[:, :channels]


class _EmptyFloat32Notice(logging.Filter):
    """Drops diffusers' "There are modules in UNet2DModel that should be kept in float32: []" (diffusers 0.42
    ``ModelMixin.to`` warns on any dtype cast when the list is empty, and ``from_pipe`` always casts): it names no
    module, so it says nothing; the same warning with modules in its list still shows."""

    def filter(self, record):
        return "should be kept in float32: []" not in record.getMessage()


class DDPMHFDenoiserMixin:
    """The class labels and the model call every ddpm-hf pipeline shares (with ``unet``, ``scheduler`` and the
    optional ``id2label`` / ``null_class_id`` in its config). Not a ``DiffusionPipeline``."""

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' ``DiffusionPipeline.from_pipe`` (the same components, no copy), without its empty float32
        notice (``_EmptyFloat32Notice``)."""
        log = logging.getLogger("diffusers.models.modeling_utils")
        notice = _EmptyFloat32Notice()
        log.addFilter(notice)
        try:
            return super().from_pipe(pipeline, **kwargs)
        finally:
            log.removeFilter(notice)

    def _register_conditional(self, id2label, null_class_id, guidance_scale=None, guidance_scales=None):
        """Register a conditional model's ``id2label`` (int keys: JSON makes them strings), ``null_class_id``,
        default ``guidance_scale`` (the one measured for the model; None: ``DEFAULT_GUIDANCE_SCALE``) and, for a
        student that takes its guidance scale as an input, its ``guidance_scales`` (``guided_class_ids``) into the
        config (model_index.json; ``from_pipe`` hands them on); nothing for an unconditional model.

        ValueError when they do not fit the UNet: a null class id or a named id outside its class embedding
        (0..num_class_embeds - 1, ddpm-hf trains the null class as the last id), or the null class given a name; a
        guidance grid whose K M + 1 ids are not the class embedding, or without the default scale."""
        unet_config = getattr(getattr(self, "unet", None), "config", None)
        if unet_config is not None and (id2label or null_class_id is not None):
            num_classes = getattr(unet_config, "num_class_embeds", None)
            if num_classes is None:
                raise ValueError("id2label / null_class_id given, but this UNet is unconditional (its config has no "
                                 "num_class_embeds)")
            named = {int(k) for k in id2label or {}}
            bad = sorted(i for i in named | ({int(null_class_id)} if null_class_id is not None else set())
                         if not 0 <= i < num_classes)
            if bad:
                raise ValueError(f"class ids {bad} (id2label / null_class_id) are not in this UNet's class embedding "
                                 f"(num_class_embeds {num_classes}: ids 0..{num_classes - 1})")
            if null_class_id is not None and int(null_class_id) in named:
                raise ValueError(f"null_class_id {null_class_id} is also a named class in id2label: the null class "
                                 "(no label) must be an id of its own")
        if guidance_scale is not None and (float(guidance_scale) < 0 or null_class_id is None):
            raise ValueError(f"guidance_scale {guidance_scale}: a model's default guidance scale must be >= 0 and "
                             "needs its null_class_id (the unconditional branch)")
        if id2label is not None or null_class_id is not None:
            self.register_to_config(id2label={int(k): str(v) for k, v in (id2label or {}).items()},
                                    null_class_id=null_class_id)
        if guidance_scale is not None:
            self.register_to_config(guidance_scale=float(guidance_scale))
        if guidance_scales is not None:
            scales = [float(w) for w in guidance_scales]
            num_classes = getattr(unet_config, "num_class_embeds", None) if unet_config is not None else None
            distinct = all(abs(a - b) >= GUIDANCE_TOLERANCE for i, a in enumerate(scales) for b in scales[i + 1:])
            if not scales or min(scales) < 0 or not distinct or null_class_id is None or \
                    int(null_class_id) % len(scales) or (num_classes is not None and num_classes != null_class_id + 1) \
                    or any(int(k) >= int(null_class_id) // len(scales) for k in id2label or {}):
                raise ValueError(f"guidance_scales {scales}: a guidance-grid student needs distinct scales >= 0, a "
                                 "class embedding of K x len(guidance_scales) ids plus the null class as the last, "
                                 "and its named classes among the K")
            guidance_index(guidance_scale if guidance_scale is not None else DEFAULT_GUIDANCE_SCALE,
                           scales)  # the default is on the grid
            self.register_to_config(guidance_scales=scales)

    def _guidance_scale(self, guidance_scale, labels):
        """The guidance scale s a call uses: the one given, else the model's own (its config's ``guidance_scale``),
        else ``DEFAULT_GUIDANCE_SCALE`` for a model with a null class and 1 (no guidance) for one without. ValueError
        for s < 0, and for s != 1 on a conditional model whose pipeline has no ``null_class_id`` (guidance needs the
        unconditional branch eps(x, null))."""
        null_id = getattr(self.config, "null_class_id", None)
        if labels is None:
            return 1.0
        if guidance_scale is None:
            guidance_scale = getattr(self.config, "guidance_scale", None)
            if guidance_scale is None:
                guidance_scale = DEFAULT_GUIDANCE_SCALE if null_id is not None else 1.0
        guidance_scale = float(guidance_scale)
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance, 0 = unconditional), got {guidance_scale}")
        grid = getattr(self.config, "guidance_scales", None)
        if grid:
            guidance_index(guidance_scale, grid)  # ValueError off the grid
        if guidance_scale != 1 and null_id is None:
            raise ValueError(f"guidance_scale {guidance_scale} needs the unconditional branch, and this pipeline has "
                             "no null_class_id (a ddpm-hf conditional model's is num_class_embeds - 1): pass "
                             "guidance_scale=1, or give the pipeline null_class_id=K if class id K was trained as "
                             "'no label'")
        return guidance_scale

    def class_id_choices(self):
        """The class ids a caller may ask for (a list; empty for an unconditional model): the class embedding's ids
        but the null one; for a guidance-grid student the K classes, null_class_id / len(guidance_scales)."""
        n = getattr(self.unet.config, "num_class_embeds", None)
        null_id, grid = getattr(self.config, "null_class_id", None), getattr(self.config, "guidance_scales", None)
        if n is None:
            return []
        return list(range(null_id // len(grid))) if grid else [i for i in range(n) if i != null_id]

    @property
    def labels(self):
        """{class name: class id} of a class-conditional model (from ``id2label``; empty for an unconditional one)."""
        return label_names(getattr(self.config, "id2label", None))

    def get_label_ids(self, label):
        """Class ids of class names (a name or a list), as diffusers' DiT pipeline: ``pipe(class_labels=
        pipe.get_label_ids(["3", "7"]))``; ValueError for a name not in ``self.labels``."""
        return get_label_ids(label, getattr(self.config, "id2label", None))

    def _class_ids(self, class_labels, batch_size):
        """(B,) long tensor of the class ids sampled (see ``class_ids``), or None for an unconditional UNet."""
        null_id, grid = getattr(self.config, "null_class_id", None), getattr(self.config, "guidance_scales", None)
        ids = class_ids(self.unet, class_labels, getattr(self.config, "id2label", None), null_id, batch_size,
                        num_labels=len(self.class_id_choices()) if grid else None)
        return None if ids is None else torch.tensor(ids, dtype=torch.long, device=self._execution_device)

    def _model_output(self, x, t, labels=None, guidance_scale=1.0, scheduler=None):
        """The UNet output at (x, t) as ``scheduler.step`` (default ``self.scheduler``) takes it (see ``denoise``):
        x scaled by the scheduler's ``scale_model_input``, classifier-free guidance with the class ids ``labels``,
        the variance channels kept only for a scheduler that uses them."""
        scheduler = scheduler or self.scheduler
        null_id, grid = getattr(self.config, "null_class_id", None), getattr(self.config, "guidance_scales", None)
        if grid and labels is not None:  # a student with its guidance as an input: one call, no unconditional branch
            labels, guidance_scale = guided_class_ids(labels, guidance_scale, grid, null_id), 1.0
        return denoise(self.unet, scheduler.scale_model_input(x, t), t, labels, null_id, guidance_scale,
                       keeps_variance_channels(scheduler))

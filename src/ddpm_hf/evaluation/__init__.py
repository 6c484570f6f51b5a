"""Scoring a diffusion model: the variational bound on held-out images (``bound``; a training run's periodic scores in
``periodic``), sample metrics in Inception features (``inception``, ``features``) or in an offline classifier's
(``digits`` for the 8x8 digits, ``mnist`` for MNIST, their shared parts in ``classifier_metric``), and
``ddpm-hf evaluate``'s report (``report``; the model it reads, ``model_source``; what it merges into a run's
metrics.json, ``merge``) with its pictures (``plots``).

The names below are imported on first use (PEP 562), so ``import ddpm_hf.evaluation`` costs nothing until then.
"""

import importlib

SAMPLE_METRICS = ("fid", "kid", "prc", "digits", "mnist")
# "guidance": a class-conditional digits or MNIST model's guidance sweep (label accuracy and FD per guidance scale)
ALL_METRICS = ("bpd",) + SAMPLE_METRICS + ("guidance",)
INCEPTION_METRICS = ("fid", "kid", "prc")

_EXPORTS = {
    "bound": ("held_out_bits", "stratified_bits", "summarize_bits", "evaluate_bits_per_dim", "evaluate_on_all_ranks"),
    "periodic": ("periodic_scores",),
    "features": ("frechet_distance", "kernel_distance", "precision_recall", "PrecomputedFeatures"),
    "inception": ("FEATURES_NAME", "INCEPTION_FILE", "INCEPTION_URL", "InceptionFeatures", "default_inception_path",
                  "image_features", "inception_path", "load_inception"),
    "digits": ("LABEL", "DigitsClassifier", "DigitsCNN", "ddpm_hf_cache_dir", "digits_arrays", "digits_metric",
               "load_digits_classifier", "real_floor", "save_digits_classifier", "train_digits_cnn", "whitening"),
    "mnist": ("MnistCNN", "load_mnist_classifier", "mnist_arrays", "mnist_metric", "save_mnist_classifier",
              "train_mnist_cnn"),
    "classifier_metric": ("Classifier", "class_statistics", "copying_check", "nearest_distances"),
    "report": ("EvaluationConfig", "evaluate"),
    "merge": ("merge_into_metrics",),
    "model_source": ("model_folder", "training_args_of"),
    "plots": ("plot_curve", "plot_steps", "save_grid"),
    "conditional": ("conditional_report", "guidance_sweep", "label_agreement"),
}
_WHERE = {name: f".{module}" for module, names in _EXPORTS.items() for name in names}
_WHERE["InceptionWeightsMissing"] = "..errors"

__all__ = ["ALL_METRICS", "INCEPTION_METRICS", "SAMPLE_METRICS", *sorted(_WHERE)]


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # the next access finds it directly
    return value


def __dir__():
    return __all__

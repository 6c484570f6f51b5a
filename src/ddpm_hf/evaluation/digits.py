"""An offline sample metric for the embedded 8x8 digits: the Frechet distance in the feature space of a small
classifier trained on the digits training split, with the classifier's mean confidence and the class balance of the
samples. It needs no download, so it runs here and in CI.

It is NOT comparable to Inception FID (different features, 64-d instead of 2048-d, 8x8 inputs): it ranks models of the
digits against each other. The classifier is a scikit-learn MLP (pixels in [0, 1] -> 128 -> 64 -> 10, ReLU), trained
deterministically (fixed seed) on the 1,617 training digits and cached as plain arrays (``.npz``, no pickle) under
``ddpm_hf_cache_dir()``; its accuracy on the 180 held-out digits is reported beside every score.
"""

import os

import numpy as np
import torch

CLASSIFIER_VERSION = 1  # bump when the classifier's recipe changes: the cache file name carries it
HIDDEN = (128, 64)
LABEL = "Frechet distance in a digits classifier's 64-d features (offline; not comparable to Inception FID)"


def ddpm_hf_cache_dir():
    """Where ddpm-hf caches derived files (classifier weights, reference statistics): $DDPM_HF_CACHE, else
    $XDG_CACHE_HOME/ddpm_hf, else ~/.cache/ddpm_hf."""
    root = os.environ.get("DDPM_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ddpm_hf")
    os.makedirs(root, exist_ok=True)
    return root


def digits_arrays(split):
    """The embedded digits of ``split`` ("train" or "test") as (uint8 (N, 1, 8, 8) tensor, labels (N,) array)."""
    from ..data import load_digits_dataset

    data = load_digits_dataset()[split]
    images = np.stack([np.asarray(im, dtype=np.uint8) for im in data["image"]])[:, None]
    return torch.from_numpy(images), np.asarray(data["label"])


class DigitsClassifier:
    """The cached MLP: ``features`` (N, 64) of its last hidden layer and ``probabilities`` (N, 10), for uint8 images
    (N, 1, 8, 8) in 0..255."""

    def __init__(self, weights, biases, test_accuracy):
        self.weights, self.biases, self.test_accuracy = weights, biases, float(test_accuracy)

    @staticmethod
    def _pixels(images_uint8):
        images = torch.as_tensor(images_uint8)
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
            raise ValueError(f"the digits metric takes grayscale 8x8 images (N, 1, 8, 8); got {tuple(images.shape)}")
        return images.reshape(len(images), 64).double().numpy() / 255.0

    def _hidden(self, x):
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = np.maximum(x @ w + b, 0.0)
        return x

    def features(self, images_uint8):
        return self._hidden(self._pixels(images_uint8))

    def probabilities(self, images_uint8):
        logits = self._hidden(self._pixels(images_uint8)) @ self.weights[-1] + self.biases[-1]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def load_digits_classifier(progress=False):
    """The digits classifier, trained once (a few seconds) and then read from the cache."""
    path = os.path.join(ddpm_hf_cache_dir(), f"digits_classifier_v{CLASSIFIER_VERSION}.npz")
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as f:
            n = len(HIDDEN) + 1
            return DigitsClassifier([f[f"w{i}"] for i in range(n)], [f[f"b{i}"] for i in range(n)],
                                    f["test_accuracy"])
    from sklearn.neural_network import MLPClassifier

    if progress:
        print("training the digits classifier once (cached afterwards) ...")
    train_images, train_labels = digits_arrays("train")
    test_images, test_labels = digits_arrays("test")
    mlp = MLPClassifier(hidden_layer_sizes=HIDDEN, alpha=1e-3, max_iter=600, random_state=0)
    mlp.fit(DigitsClassifier._pixels(train_images), train_labels)
    accuracy = mlp.score(DigitsClassifier._pixels(test_images), test_labels)
    arrays = {f"w{i}": w for i, w in enumerate(mlp.coefs_)} | {f"b{i}": b for i, b in enumerate(mlp.intercepts_)}
    tmp = path + f".{os.getpid()}.tmp.npz"
    np.savez(tmp, test_accuracy=accuracy, **arrays)
    os.replace(tmp, path)
    return DigitsClassifier(list(mlp.coefs_), list(mlp.intercepts_), accuracy)


def digits_metric(images_uint8, reference_uint8=None, classifier=None):
    """Score uint8 digits (N, 1, 8, 8) against the reference (default: the training split).

    Returns {"digits_fd": Frechet distance of the classifier features (torchmetrics' FID code on these features),
    "digits_kid"/"digits_kid_std": the kernel distance (KID, unbiased) in the same features, mean and std over
    subsets, "digits_confidence": mean max class probability, "digits_class_balance": entropy of the predicted-class
    histogram over log 10 (1 = all ten digits equally often), "digits_class_histogram",
    "digits_classifier_test_accuracy", "num_samples", "num_reference"}.
    """
    from .features import frechet_distance, kernel_distance

    classifier = classifier or load_digits_classifier()
    if reference_uint8 is None:
        reference_uint8, _ = digits_arrays("train")
    reference_features, features = classifier.features(reference_uint8), classifier.features(images_uint8)
    kid, kid_std = kernel_distance(reference_features, features, subsets=100, subset_size=min(
        500, len(features), len(reference_features)))
    probabilities = classifier.probabilities(images_uint8)
    counts = np.bincount(probabilities.argmax(axis=1), minlength=10)
    share = counts / counts.sum()
    entropy = -np.sum(share[share > 0] * np.log(share[share > 0]))
    return {
        "digits_fd": frechet_distance(reference_features, features),
        "digits_kid": kid,  # unbiased: about 0 (+- digits_kid_std) for real digits, unlike the FD's finite-N floor
        "digits_kid_std": kid_std,
        "digits_confidence": float(probabilities.max(axis=1).mean()),
        "digits_class_balance": float(entropy / np.log(10)),
        "digits_class_histogram": counts.tolist(),
        "digits_classifier_test_accuracy": classifier.test_accuracy,
        "num_samples": int(len(images_uint8)),
        "num_reference": int(len(reference_uint8)),
    }

"""An offline sample metric for the embedded MNIST digits (``--dataset_name mnist``, 28x28), built like the digits
metric (``digits.py``): the Frechet distance (FD) and kernel distance (KID) of the samples in the whitened 128-d
features of a small MNIST classifier, each with the real-data floor at the same sample count; the classifier's
accuracy on the held-out digits and its confidence and class balance on the samples; and the nearest-training-image
check, so that copying training digits cannot pass for quality. No download: it runs here and in CI. It is NOT
comparable to Inception FID on MNIST: it ranks models of these 5,000 digits against each other and against real ones.

Features. ``MnistCNN`` (3x3 convolutions of 32, 32, 64 and 64 channels at 28, 28, 14 and 7 pixels, max-pooling
between, a 128-unit hidden layer, 10 classes) trained on the 4,500 training digits with a fixed seed and one thread
(``train_mnist_cnn``). The package ships its weights (``mnist_cnn_v1.safetensors`` beside this file), so every
machine scores with the same network (a recipe is bit-reproducible on one CPU, not across CPUs).

Reference, and the floor. The reference is the 500 held-out digits (50 per class) the model never trained on, so a
model that copies its training digits gains nothing over one that generalises. Unlike the digits metric, MNIST has
real digits independent of that reference: the 4,500 training digits. The floor at N samples is then measured
directly, with no extrapolation: the FD (and KID) of N training digits drawn at random against the 500 held-out
ones, mean and standard deviation over ``floor_draws`` draws (without replacement within a draw). That is what a
perfect model's samples score, up to the draw; the FD's finite-sample bias (about c (1/N + 1/500)) is in the floor as
it is in the score, which is why the score is read against the floor, not against 0.

Whitening. The features are whitened by the covariance of the 4,500 training digits' features (shrinkage 1% of its
mean eigenvalue, as the digits metric): a fixed linear map, the same for the samples, the floor and the reference.
"""

import functools
import os

import numpy as np
import torch

from .classifier_metric import (Classifier, class_statistics, copying_check, load_classifier, save_classifier,
                                train_classifier, whitening)

CLASSIFIER_VERSION = 1  # bump when the classifier's recipe changes: the shipped file's name carries it
FEATURES = 128
SHAPE = (1, 28, 28)
LABEL = ("Frechet distance to the 500 held-out MNIST digits in an MNIST CNN's 128-d features, whitened by the "
         "training digits' (offline; not comparable to Inception FID)")
SHIPPED_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  f"mnist_cnn_v{CLASSIFIER_VERSION}.safetensors")


class MnistCNN(torch.nn.Module):
    """The metric's classifier: (N, 1, 28, 28) in [0, 1] -> 10 logits. ``body`` ends in its 128-d hidden layer
    (after the ReLU, so >= 0), the metric's features."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 32 x 14 x 14
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 64 x 7 x 7
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 64 x 3 x 3
            torch.nn.Flatten(), torch.nn.Linear(576, FEATURES), torch.nn.ReLU())
        self.head = torch.nn.Linear(FEATURES, 10)

    def forward(self, x):
        return self.head(self.body(x))


@functools.lru_cache(maxsize=2)
def mnist_arrays(split):
    """The embedded MNIST digits of ``split`` ("train" 4,500 or "test" 500) as (uint8 (N, 1, 28, 28) tensor, labels
    (N,) array)."""
    from ..data import load_mnist_dataset

    data = load_mnist_dataset()[split]
    images = np.stack([np.asarray(im, dtype=np.uint8) for im in data["image"]])[:, None]
    return torch.from_numpy(images), np.asarray(data["label"])


def train_mnist_cnn(seed=0, epochs=20, batch_size=64, learning_rate=1e-3):
    """Train ``MnistCNN`` on the 4,500 training digits deterministically (seeded, one thread, Adam); returns
    (network, accuracy on the 500 held-out digits). About 3 minutes on one core."""
    train_images, train_labels = mnist_arrays("train")
    test_images, test_labels = mnist_arrays("test")
    network = train_classifier(MnistCNN, train_images.float() / 255.0, train_labels, seed, epochs, batch_size,
                               learning_rate)
    return network, Classifier(network, 0.0, SHAPE).accuracy(test_images, test_labels)


def save_mnist_classifier(path, network, accuracy):
    """Write a trained ``MnistCNN`` as safetensors (how SHIPPED_CLASSIFIER was made:
    ``save_mnist_classifier(SHIPPED_CLASSIFIER, *train_mnist_cnn())``)."""
    save_classifier(path, network, accuracy, CLASSIFIER_VERSION)


def load_mnist_classifier(path=SHIPPED_CLASSIFIER):
    """The MNIST classifier: the weights the package ships, or those of ``path``."""
    return load_classifier(path, MnistCNN, CLASSIFIER_VERSION, SHAPE)


def real_floor(pool_features, reference_features, num_samples, draws=20, seed=0):
    """The real-data floor of ``num_samples`` samples against ``reference_features`` (M, D), measured on real images
    independent of the reference (``pool_features`` (P, D), P >= num_samples): FD and KID of ``draws`` random draws of
    ``num_samples`` pool images, {"fd_floor", "fd_floor_std", "kid_floor", "kid_floor_std"} (mean and std)."""
    from .features import frechet_distance, kernel_distance

    pool, reference = np.asarray(pool_features), np.asarray(reference_features)
    if num_samples > len(pool):
        raise ValueError(f"the floor at {num_samples} samples needs as many independent real images; there are "
                         f"{len(pool)}")
    rng = np.random.default_rng(seed)
    fds, kids = [], []
    for _ in range(draws):
        real = pool[rng.choice(len(pool), num_samples, replace=False)]
        fds.append(frechet_distance(reference, real))
        kids.append(kernel_distance(reference, real, subsets=10, subset_size=min(500, num_samples, len(reference)))[0])
    return {"fd_floor": float(np.mean(fds)), "fd_floor_std": float(np.std(fds, ddof=1)),
            "kid_floor": float(np.mean(kids)), "kid_floor_std": float(np.std(kids, ddof=1))}


def mnist_metric(images_uint8, classifier=None, floor_draws=20):
    """Score uint8 MNIST-like images (N, 1, 28, 28), N <= 4,500, against the 500 held-out digits (module docstring).

    Returns {"mnist_fd", "mnist_fd_floor"/"mnist_fd_floor_std" (the FD of N real training digits, mean and std over
    draws), "mnist_fd_over_floor" (1 = as good as real digits at this N), "mnist_kid"/"mnist_kid_std" (unbiased,
    mean and std over subsets), "mnist_kid_floor"/"mnist_kid_floor_std", "mnist_confidence", "mnist_class_balance",
    "mnist_class_histogram", "mnist_heldout_confidence" (the held-out digits' confidence, for scale), the
    nearest-training-image check ("mnist_nearest_train_median", ...,
    "mnist_nearest_train_ratio", "mnist_near_copies": ``classifier_metric.copying_check``),
    "mnist_classifier_test_accuracy", "num_samples", "num_reference", "reference"}. ``floor_draws`` = 0 skips the
    floor."""
    from .features import frechet_distance, kernel_distance

    classifier = classifier or load_mnist_classifier()
    train_images, _ = mnist_arrays("train")
    reference_images, _ = mnist_arrays("test")
    train_features = classifier.features(train_images)
    w = whitening(train_features)
    reference, features = classifier.features(reference_images) @ w, classifier.features(images_uint8) @ w
    fd = frechet_distance(reference, features)
    kid, kid_std = kernel_distance(reference, features, subsets=50, subset_size=min(500, len(features)))
    out = {"mnist_fd": fd}
    if floor_draws:
        floor = real_floor(train_features @ w, reference, len(features), draws=floor_draws)
        out.update(mnist_fd_floor=floor["fd_floor"], mnist_fd_floor_std=floor["fd_floor_std"],
                   mnist_fd_over_floor=fd / floor["fd_floor"], mnist_kid_floor=floor["kid_floor"],
                   mnist_kid_floor_std=floor["kid_floor_std"])
    return out | {
        "mnist_kid": kid,
        "mnist_kid_std": kid_std,
        **class_statistics(classifier.probabilities(images_uint8), "mnist"),
        # the same for the held-out digits: what real digits the classifier never trained on score (its confidence on
        # training digits is higher: it has seen them)
        "mnist_heldout_confidence": float(classifier.probabilities(reference_images).max(axis=1).mean()),
        **copying_check(images_uint8, train_images, reference_images, "mnist"),
        "mnist_classifier_test_accuracy": classifier.test_accuracy,
        "num_samples": int(len(images_uint8)),
        "num_reference": int(len(reference_images)),
        "reference": f"the {len(reference_images)} held-out MNIST digits (split test)",
    }

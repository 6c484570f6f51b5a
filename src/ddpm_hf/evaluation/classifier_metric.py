"""The parts every offline classifier metric shares (the digits metric in ``digits.py``, the MNIST one in
``mnist.py``): a small CNN trained deterministically and shipped as safetensors, its features and class
probabilities, the whitening of its features, what it makes of the samples' classes, and how near the samples are to
their nearest training image. Each dataset module adds its network, its data and its real-data floor.
"""

import os

import numpy as np
import torch

SHRINKAGE = 0.01  # whitening: the reference covariance + SHRINKAGE * its mean eigenvalue * I (digits.py docstring)


class Classifier:
    """A trained CNN for uint8 images (N, C, H, W) in 0..255 of one shape: ``features`` (N, D) float64 array of its
    hidden layer (``network.body``), ``probabilities`` (N, K) float64 array; ``test_accuracy`` on its held-out split."""

    def __init__(self, network, test_accuracy, shape):
        self.network, self.test_accuracy, self.shape = network.eval(), float(test_accuracy), tuple(shape)

    def pixels(self, images_uint8):
        """uint8 images (N, *shape) in 0..255 as float32 in [0, 1]; ValueError for any other shape."""
        images = torch.as_tensor(images_uint8)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"this metric takes images of shape (N, {', '.join(map(str, self.shape))}); got "
                             f"{tuple(images.shape)}")
        return images.float() / 255.0

    @torch.no_grad()
    def _run(self, images_uint8, head):
        x = self.pixels(images_uint8)
        out = [(self.network if head else self.network.body)(x[i : i + 1024]) for i in range(0, len(x), 1024)]
        if out:
            return torch.cat(out).double().numpy()
        return np.zeros((0, self.network.head.out_features if head else self.network.head.in_features))

    def features(self, images_uint8):
        return self._run(images_uint8, head=False)

    def probabilities(self, images_uint8):
        logits = self._run(images_uint8, head=True)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def accuracy(self, images_uint8, labels):
        """The share of ``images_uint8`` whose most probable class is their label."""
        return float((self.probabilities(images_uint8).argmax(axis=1) == np.asarray(labels)).mean())


def train_classifier(network_fn, x, y, seed=0, epochs=40, batch_size=64, learning_rate=1e-3, weight_decay=1e-4):
    """Train ``network_fn()`` (a module with ``body`` and ``head``) on pixels ``x`` (N, C, H, W) float32 in [0, 1]
    and labels ``y`` (N,) deterministically: seeded initialisation and batches, one thread (the same arithmetic on
    every machine size), Adam with cross-entropy. Returns the network in eval mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = network_fn()
        optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
        y = torch.as_tensor(y)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                index = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(network(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return network.eval()


def save_classifier(path, network, accuracy, version):
    """Write a trained network as safetensors (no pickle), its held-out accuracy and recipe ``version`` in the
    metadata; atomically (a temporary file renamed)."""
    from safetensors.torch import save_file

    tmp = f"{path}.{os.getpid()}.tmp"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, tmp,
              metadata={"test_accuracy": repr(accuracy), "version": str(version)})
    os.replace(tmp, path)


def load_classifier(path, network_fn, version, shape):
    """The ``Classifier`` of the weights in ``path`` (written by ``save_classifier``); ValueError if they were made
    by another recipe ``version``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    if metadata.get("version") != str(version):
        raise ValueError(f"{path}: classifier version {metadata.get('version')}, expected {version}")
    network = network_fn()
    network.load_state_dict(load_file(path))
    return Classifier(network, float(metadata["test_accuracy"]), shape)


def whitening(reference_features, shrinkage=SHRINKAGE):
    """The (D, D) matrix W = V (L + s I)^(-1/2) (V L V^T the reference covariance, s = ``shrinkage`` x the mean of
    L): features @ W are the whitened features the metric compares (digits.py docstring)."""
    values, vectors = np.linalg.eigh(np.cov(np.asarray(reference_features, dtype=np.float64), rowvar=False))
    values = np.clip(values, 0.0, None)
    return vectors / np.sqrt(values + shrinkage * values.mean())


def class_statistics(probabilities, prefix="digits"):
    """What the classifier makes of a set of images, from its (N, K) class probabilities: "PREFIX_confidence", the
    mean max class probability (malformed or ambiguous digits lower it), "PREFIX_class_balance", the entropy of the
    predicted-class histogram over log K (1 = every class equally often), and "PREFIX_class_histogram"."""
    k = probabilities.shape[1]
    counts = np.bincount(probabilities.argmax(axis=1), minlength=k)
    share = counts / counts.sum()
    entropy = -np.sum(share[share > 0] * np.log(share[share > 0]))
    return {f"{prefix}_confidence": float(probabilities.max(axis=1).mean()),
            f"{prefix}_class_balance": float(entropy / np.log(k)), f"{prefix}_class_histogram": counts.tolist()}


def nearest_distances(images_uint8, train_uint8, chunk=512):
    """The Euclidean distance (pixels in [0, 1]) from each image (N, C, H, W) to its nearest image of
    ``train_uint8`` (M, C, H, W): (N,) float64 array. An image that is in ``train_uint8`` scores 0."""
    train = torch.as_tensor(train_uint8).flatten(1).double() / 255.0
    images = torch.as_tensor(images_uint8).flatten(1).double() / 255.0
    out = [torch.cdist(images[i : i + chunk], train).min(dim=1).values for i in range(0, len(images), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def copying_check(samples_uint8, train_uint8, held_out_uint8, prefix):
    """The nearest-training-image check: how near the samples are to their nearest training image, beside how near
    real images the model never saw (``held_out_uint8``) are. A model that copies training images has samples
    nearer than held-out images are ("PREFIX_nearest_train_ratio" < 1, and a share of samples at distance about 0);
    one that generalises scores about 1. Returns the medians and 10th percentiles of both, their ratio, and
    "PREFIX_near_copies": the share of samples nearer to a training image than 99% of held-out images are."""
    samples = nearest_distances(samples_uint8, train_uint8)
    held_out = nearest_distances(held_out_uint8, train_uint8)
    return {f"{prefix}_nearest_train_median": float(np.median(samples)),
            f"{prefix}_nearest_train_p10": float(np.percentile(samples, 10)),
            f"{prefix}_heldout_nearest_train_median": float(np.median(held_out)),
            f"{prefix}_heldout_nearest_train_p10": float(np.percentile(held_out, 10)),
            f"{prefix}_nearest_train_ratio": float(np.median(samples) / np.median(held_out)),
            f"{prefix}_near_copies": float((samples < np.percentile(held_out, 1)).mean())}

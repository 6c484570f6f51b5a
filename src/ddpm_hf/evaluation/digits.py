"""An offline sample metric for the embedded 8x8 digits: the Frechet distance (FD) and the kernel distance (KID) of
the samples to all 1,797 embedded digits in the features of a small digits classifier, each score with the real-data
floor at the same sample count, plus the classifier's mean confidence and the class balance of the samples. It
needs no download, so it runs here and in CI. It is NOT comparable to Inception FID (other features, 8x8 inputs): it
ranks models of the digits against each other and against real digits.

Features. A small CNN (``DigitsCNN``: two 3x3 convolutions at 8x8, one at 4x4, a 128-unit hidden layer, 10 classes)
trained on the 1,617 training digits with a fixed seed, one thread and a fixed recipe (``train_digits_cnn``). The
package ships its weights (``digits_cnn_v2.safetensors`` beside this file, no pickle; ``save_digits_classifier``
wrote them), so every machine scores with the same network: the recipe is bit-reproducible on one machine whatever
its thread count, but not across CPUs (their float kernels differ), and a classifier trained elsewhere moves every
score a little (the real-data floor at N = 1,000 was 1.392 with one machine's training and 1.408 with another's).
Its accuracy on the 180 held-out digits is reported beside every score. The features are its 128-d hidden layer. It replaced the first
version's scikit-learn MLP (64-d last hidden layer), which could not tell the ``make demo`` model from real digits:
``benchmarks/digits_metric.py`` measures both (and raw pixels) on the same samples; BENCHMARKS.md has the numbers.

Whitening. The distances are computed after whitening the features by the reference: x -> (S + s I)^(-1/2) x
with S the reference covariance and s = SHRINKAGE (1%) of its mean eigenvalue. Raw, the CNN features' covariance
spans five orders of magnitude (51 of 128 units are never active on real digits), so the FD is a sum of a few large
directions and its real-data floor fluctuates by about 35% from draw to draw; whitened, every direction weighs the
same, the floor's spread falls to about 5%, and a model 500 training steps in sits about 27 floor standard
deviations above the floor instead of 8. The shrinkage keeps directions real digits barely use from being amplified
more than 10x (without it a 1e-6 eigenvalue would turn rounding noise into distance). In the whitened coordinates
the reference covariance is about I, so FD = ||mu_g - mu_r||^2 + sum_i (sqrt(l_i) - 1)^2 over the eigenvalues l_i of
the samples' covariance (for s -> 0): a distance between the two Gaussians that counts every feature direction.

Reference. All 1,797 digits (train and test splits together), the most the data holds: the FD's finite-sample bias
falls with the reference size as well as with the sample count.

The floor, and why it is computed as it is. A model's N samples are independent of the reference; N real digits
taken from the 1,797 are not, they are part of it, and that overlap pulls their FD down: for the mean term alone,
E||m_S - m_ref||^2 = Tr(S)(1/N - 1/M) for a subset S of the reference instead of Tr(S)(1/N + 1/M) for an
independent set (M = 1,797; at N = 1,000 that is 3.5x smaller), so "real digits against the reference" would be a
floor no model could reach. The data also has no N + M independent digits to measure the honest floor directly.
What it can measure without overlap is FD(n, m) between disjoint sets of real digits, n + m <= M. To first order in
1/n and 1/m the FD of two samples of one distribution is c (1/n + 1/m), c set by the features' covariance and fourth
moments (the same linear-in-1/N bias Chong & Forsyth 2020, "Effectively Unbiased FID", sec. 3, use to extrapolate
FID to N = infinity). So the floor at the model's (N, M) is each disjoint split's FD scaled by
(1/N + 1/M) / (1/n + 1/(M - n)), with n = N when N <= M - 300 (else n = M // 2); mean and standard deviation over
``floor_draws`` random splits. ``benchmarks/digits_metric.py`` checks the 1/n + 1/m law on disjoint splits of many
sizes. The KID needs no such model: its estimator is unbiased (Binkowski et al. 2018, eq. 4 of their sec. 3), so its
floor is 0 at any size, and its spread is measured on the same disjoint splits (a smaller reference than the
model's, so slightly wide: conservative).

A model's own spread (over the seeds of its samples) is not here: it needs several sample sets; ``ddpm-hf evaluate
--seed`` and the benchmark give it.
"""

import os

import numpy as np
import torch

from .classifier_metric import Classifier, load_classifier, save_classifier, train_classifier, whitening
from .classifier_metric import class_statistics as _class_statistics

CLASSIFIER_VERSION = 2  # bump when the classifier's recipe changes: the cache file name carries it
FEATURES = 128
LABEL = ("Frechet distance to all 1,797 digits in a digits CNN's 128-d features, whitened by the reference (offline; "
         "not comparable to Inception FID)")
MIN_HELD_BACK = 300  # a disjoint floor split leaves at least this many digits on the reference side


def ddpm_hf_cache_dir():
    """Where ddpm-hf caches derived files (reference statistics): $DDPM_HF_CACHE, else
    $XDG_CACHE_HOME/ddpm_hf, else ~/.cache/ddpm_hf."""
    root = os.environ.get("DDPM_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ddpm_hf")
    os.makedirs(root, exist_ok=True)
    return root


def digits_arrays(split):
    """The embedded digits of ``split`` ("train", "test", or "all" for both, train first) as (uint8 (N, 1, 8, 8)
    tensor, labels (N,) array)."""
    from ..data import load_digits_dataset

    if split == "all":
        parts = [digits_arrays(s) for s in ("train", "test")]
        return torch.cat([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    data = load_digits_dataset()[split]
    images = np.stack([np.asarray(im, dtype=np.uint8) for im in data["image"]])[:, None]
    return torch.from_numpy(images), np.asarray(data["label"])


def pixels(images_uint8):
    """uint8 digits (N, 1, 8, 8) in 0..255 as float32 (N, 1, 8, 8) in [0, 1]; ValueError for any other shape."""
    images = torch.as_tensor(images_uint8)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"the digits metric takes grayscale 8x8 images (N, 1, 8, 8); got {tuple(images.shape)}")
    return images.float() / 255.0


class DigitsCNN(torch.nn.Module):
    """The metric's classifier: (N, 1, 8, 8) in [0, 1] -> 10 logits. ``features`` is its 128-d hidden layer
    (after the ReLU, so >= 0)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 32 x 4 x 4
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 64 x 2 x 2
            torch.nn.Flatten(), torch.nn.Linear(256, FEATURES), torch.nn.ReLU())
        self.head = torch.nn.Linear(FEATURES, 10)

    def forward(self, x):
        return self.head(self.body(x))


class DigitsClassifier(Classifier):
    """The digits CNN, for uint8 images (N, 1, 8, 8) in 0..255: ``features`` (N, 128) float64 array,
    ``probabilities`` (N, 10) float64 array; ``test_accuracy`` on the 180 held-out digits."""

    def __init__(self, network, test_accuracy):
        super().__init__(network, test_accuracy, (1, 8, 8))

    def pixels(self, images_uint8):
        return pixels(images_uint8)


def train_digits_cnn(seed=0, epochs=40, batch_size=64, learning_rate=1e-3):
    """Train ``DigitsCNN`` on the training split, deterministically (``classifier_metric.train_classifier``: seeded
    init and batches, one thread, Adam); returns (network, accuracy on the test split). About 10 s on one core."""
    train_images, train_labels = digits_arrays("train")
    test_images, test_labels = digits_arrays("test")
    network = train_classifier(DigitsCNN, pixels(train_images), train_labels, seed, epochs, batch_size,
                               learning_rate)
    return network, DigitsClassifier(network, 0.0).accuracy(test_images, test_labels)


SHIPPED_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  f"digits_cnn_v{CLASSIFIER_VERSION}.safetensors")


def save_digits_classifier(path, network, accuracy):
    """Write a trained ``DigitsCNN`` as safetensors, its held-out accuracy and the recipe version in the metadata
    (how SHIPPED_CLASSIFIER was made: ``save_digits_classifier(SHIPPED_CLASSIFIER, *train_digits_cnn())``)."""
    save_classifier(path, network, accuracy, CLASSIFIER_VERSION)


def load_digits_classifier(path=SHIPPED_CLASSIFIER):
    """The digits classifier: the weights the package ships (module docstring), or those of ``path``."""
    classifier = load_classifier(path, DigitsCNN, CLASSIFIER_VERSION, (1, 8, 8))
    return DigitsClassifier(classifier.network, classifier.test_accuracy)


def floor_scale(num_samples, num_reference, n):
    """The factor from a disjoint real split (n against num_reference - n) to the model's (num_samples against
    num_reference): (1/N + 1/M) / (1/n + 1/(M - n)), the first-order FD bias c (1/n + 1/m) (module docstring)."""
    return (1 / num_samples + 1 / num_reference) / (1 / n + 1 / (num_reference - n))


def floor_split_size(num_samples, num_reference):
    """n, the real digits on the sample side of a floor split (N when that leaves >= MIN_HELD_BACK, else M // 2)."""
    return num_samples if num_samples <= num_reference - MIN_HELD_BACK else num_reference // 2


def real_floor(reference_features, num_samples, draws=20, seed=0, kid=True):
    """The real-data floor of ``num_samples`` samples against ``reference_features`` (M, D) (module docstring):
    {"fd_floor", "fd_floor_std"} (scaled disjoint splits, mean and std over ``draws``), "fd_floor_split" (n, m),
    and with ``kid`` "kid_floor_std" (the spread of the unbiased KID of real digits; its mean, about 0, as
    "kid_floor")."""
    from .features import frechet_distance, kernel_distance

    reference = np.asarray(reference_features)
    m = len(reference)
    n = floor_split_size(num_samples, m)
    scale = floor_scale(num_samples, m, n)
    rng = np.random.default_rng(seed)
    fds, kids = [], []
    for _ in range(draws):
        order = rng.permutation(m)
        real, rest = reference[order[:n]], reference[order[n:]]
        fds.append(scale * frechet_distance(rest, real))
        if kid:
            kids.append(kernel_distance(rest, real, subsets=10, subset_size=min(500, n, m - n))[0])
    out = {"fd_floor": float(np.mean(fds)), "fd_floor_std": float(np.std(fds, ddof=1)),
           "fd_floor_split": [n, m - n]}
    if kid:
        out.update(kid_floor=float(np.mean(kids)), kid_floor_std=float(np.std(kids, ddof=1)))
    return out


def class_statistics(probabilities):
    """What the classifier makes of a set of digits, from its (N, 10) class probabilities: "digits_confidence", the
    mean max class probability (malformed or ambiguous digits lower it), "digits_class_balance", the entropy of the
    predicted-class histogram over log 10 (1 = all ten digits equally often), and "digits_class_histogram"."""
    return _class_statistics(probabilities, "digits")


def digits_metric(images_uint8, reference_uint8=None, classifier=None, floor_draws=20):
    """Score uint8 digits (N, 1, 8, 8) against the reference (default: all 1,797 embedded digits).

    Returns {"digits_fd": the Frechet distance of the classifier's features whitened by the reference
    (torchmetrics' FID code on them),
    "digits_fd_floor"/"digits_fd_floor_std": the FD real digits score at the same N (module docstring),
    "digits_fd_over_floor": digits_fd / digits_fd_floor (1 = as good as real data at this N),
    "digits_kid"/"digits_kid_std": the unbiased kernel distance, mean and std over subsets, "digits_kid_floor_std":
    the spread of real digits' KID (its floor is 0), "digits_confidence": mean max class probability,
    "digits_class_balance": entropy of the predicted-class histogram over log 10 (1 = all ten digits equally often),
    "digits_class_histogram", "digits_classifier_test_accuracy", "num_samples", "num_reference", "reference"}.
    ``floor_draws`` = 0 skips the floor.
    """
    from .features import frechet_distance, kernel_distance

    classifier = classifier or load_digits_classifier()
    described = "the given reference images"
    if reference_uint8 is None:
        reference_uint8, _ = digits_arrays("all")
        described = f"all {len(reference_uint8)} embedded digits (train and test splits)"
    reference_features = classifier.features(reference_uint8)
    w = whitening(reference_features)
    reference_features, features = reference_features @ w, classifier.features(images_uint8) @ w
    kid, kid_std = kernel_distance(reference_features, features, subsets=50, subset_size=min(
        1000, len(features), len(reference_features)))
    fd = frechet_distance(reference_features, features)
    out = {"digits_fd": fd}
    if floor_draws:
        floor = real_floor(reference_features, len(features), draws=floor_draws)
        out.update(digits_fd_floor=floor["fd_floor"], digits_fd_floor_std=floor["fd_floor_std"],
                   digits_fd_over_floor=fd / floor["fd_floor"], digits_fd_floor_split=floor["fd_floor_split"],
                   digits_kid_floor_std=floor["kid_floor_std"])
    return out | {
        "digits_kid": kid,  # unbiased: about 0 (+- digits_kid_floor_std) for real digits
        "digits_kid_std": kid_std,
        **class_statistics(classifier.probabilities(images_uint8)),
        "digits_classifier_test_accuracy": classifier.test_accuracy,
        "num_samples": int(len(images_uint8)),
        "num_reference": int(len(reference_uint8)),
        "reference": described,
    }

"""Distances between two sets of image features (real and generated), whatever network made the features.

The Frechet distance (Heusel et al. 2017, eq. 6 of their appendix: ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2))
and the kernel distance (Binkowski et al. 2018, unbiased MMD^2 with the cubic polynomial kernel over subsets) are
computed by torchmetrics' FrechetInceptionDistance and KernelInceptionDistance, fed features that were computed
once (so the reference features can be cached and reused); improved precision and recall (Kynkaanniemi et al. 2019,
eq. 1-2, k = 3) are written here, as torchmetrics has no implementation of them.
"""

import warnings

import numpy as np
import torch


class PrecomputedFeatures(torch.nn.Module):
    """The "feature extractor" torchmetrics calls when the features are already computed: the identity on (N, D)."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def _as_float64(features):
    return torch.as_tensor(np.asarray(features), dtype=torch.float64)


def frechet_distance(real_features, fake_features):
    """FID-style Frechet distance between the Gaussians fitted to two feature sets (N, D) and (M, D)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _as_float64(real_features), _as_float64(fake_features)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1])).double()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kernel_distance(real_features, fake_features, subsets=100, subset_size=1000, seed=0):
    """KID: the unbiased MMD^2 with kernel k(x, y) = (x.y / D + 1)^3, mean and standard deviation over ``subsets``
    random subsets of ``min(subset_size, N, M)`` features each (seeded). Returns (mean, std)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _as_float64(real_features), _as_float64(fake_features)
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": they are already in memory here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subsets=subsets,
                                         subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the subsets (torchmetrics draws them with the global generator)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_radius(features, k, chunk=1024):
    """The distance of each row to its k-th nearest other row (Kynkaanniemi et al. 2019, NN_k)."""
    radii = []
    for start in range(0, len(features), chunk):
        d = torch.cdist(features[start : start + chunk], features)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the smallest distance, 0, is the row itself
    return torch.cat(radii)


def _covered(points, centres, radii, chunk=1024):
    """For each point, whether it lies within radius of at least one centre (the manifold estimate, eq. 1)."""
    inside = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start : start + chunk], centres)
        inside.append((d <= radii[None]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_features, fake_features, k=3):
    """Improved precision (the share of generated samples inside the real manifold) and recall (the share of real
    samples inside the generated manifold), each manifold the union of balls around its points with radius the
    distance to the k-th nearest neighbour (Kynkaanniemi et al. 2019, eq. 1-2). Returns (precision, recall)."""
    real, fake = _as_float64(real_features), _as_float64(fake_features)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and generated samples")
    precision = _covered(fake, real, _kth_neighbour_radius(real, k)).double().mean().item()
    recall = _covered(real, fake, _kth_neighbour_radius(fake, k)).double().mean().item()
    return precision, recall

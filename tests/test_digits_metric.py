"""The digits metric (ddpm_hf.evaluation.digits): its real-data floor against a Monte Carlo of independent samples,
real digits inside the floor, corrupted digits far above it, the classifier's determinism and its shipped weights."""


import numpy as np
import pytest
import torch
from safetensors import safe_open

from ddpm_hf.evaluation import digits
from ddpm_hf.evaluation.digits import (digits_arrays, digits_metric, floor_scale, load_digits_classifier, real_floor,
                                       save_digits_classifier, train_digits_cnn)
from ddpm_hf.evaluation.features import frechet_distance


def test_floor_predicts_the_fd_of_independent_samples():
    """The floor is computed from the reference alone (disjoint splits, scaled by (1/N + 1/M) / (1/n + 1/(M - n)));
    here the features are Gaussian, so independent N-samples can be drawn fresh: their FD against the same reference
    (Monte Carlo, 40 draws) must match the floor, and the overlapped estimate (N of the reference against all of it)
    must not."""
    rng = np.random.default_rng(0)
    d, M, N = 6, 1797, 1000
    scales = np.linspace(0.5, 2.0, d)
    def draw(k):
        return rng.standard_normal((k, d)) * scales
    reference = draw(M)
    floor = real_floor(reference, N, draws=40, seed=1, kid=False)
    fresh = np.array([frechet_distance(reference, draw(N)) for _ in range(40)])
    se = np.hypot(fresh.std(ddof=1), floor["fd_floor_std"]) / np.sqrt(40)
    assert abs(floor["fd_floor"] - fresh.mean()) < 4 * se, (floor, fresh.mean(), se)
    assert abs(floor["fd_floor"] / fresh.mean() - 1) < 0.15
    overlapped = np.mean([frechet_distance(reference, reference[rng.permutation(M)[:N]]) for _ in range(40)])
    assert overlapped < 0.5 * fresh.mean()  # why the floor is not "N real digits against the whole reference"
    assert floor["fd_floor_split"] == [N, M - N]
    # the scale is the ratio of the two first-order biases; at n = N it only swaps the reference size
    assert floor_scale(N, M, N) == pytest.approx((1 / N + 1 / M) / (1 / N + 1 / (M - N)))


@pytest.fixture(scope="module")
def classifier(digits_classifier):
    return digits_classifier


@pytest.mark.slow  # about 10 s
def test_real_digits_score_within_the_floor_and_corrupted_ones_far_above(classifier):
    assert classifier.test_accuracy > 0.95
    images, _ = digits_arrays("all")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    samples, reference = images[order[:1000]], images[order[1000:]]
    # real digits the reference does not hold, as a model's samples are: at the floor
    real = digits_metric(samples, reference, classifier=classifier)
    assert abs(real["digits_fd"] - real["digits_fd_floor"]) < 3 * real["digits_fd_floor_std"], real
    assert abs(real["digits_kid"]) < 3 * real["digits_kid_floor_std"]
    assert real["digits_confidence"] > 0.95 and real["digits_class_balance"] > 0.99
    assert sum(real["digits_class_histogram"]) == 1000 and real["num_reference"] == 797
    assert real["digits_fd_floor_split"] == [398, 399]  # 1,000 > 797 - 300: half the reference on each side
    print({k: v for k, v in real.items() if "hist" not in k})
    # blurred (a 3x3 binomial kernel) and noised (sigma 40 of 255) digits against the same reference (digits they
    # were not made from, as for real ones): far above the floor
    kernel = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float64) / 16
    blurred = torch.nn.functional.conv2d(samples.double(), kernel[None, None], padding=1).round().to(torch.uint8)
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(1)) * 40
    noised = (samples.float() + noise).clamp(0, 255).round().to(torch.uint8)
    for corrupted in (blurred, noised):
        score = digits_metric(corrupted, reference, classifier=classifier)
        print({k: v for k, v in score.items() if "hist" not in k})
        assert score["digits_fd"] > score["digits_fd_floor"] + 10 * score["digits_fd_floor_std"], score
        assert score["digits_fd_over_floor"] > 1.5
        assert score["digits_kid"] > 5 * score["digits_kid_floor_std"]
    # against all 1,797 by default, the floor split then (1000, 797)
    default = digits_metric(samples, classifier=classifier, floor_draws=2)
    assert default["num_reference"] == 1797 and default["digits_fd_floor_split"] == [1000, 797]
    assert default["digits_fd"] < default["digits_fd_floor"]  # the overlap: these 1,000 are in the reference
    with pytest.raises(ValueError, match="grayscale 8x8"):
        digits_metric(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), classifier=classifier)


def test_classifier_training_is_deterministic():
    """Two trainings with the recipe (one epoch here) give bit-identical weights, whatever the thread count."""
    first, accuracy = train_digits_cnn(epochs=1)
    torch.set_num_threads(2)
    try:
        second, again = train_digits_cnn(epochs=1)
    finally:
        torch.set_num_threads(1)
    assert accuracy == again
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_classifier_save_load_round_trip(tmp_path):
    """A trained classifier written with save_digits_classifier (safetensors, test accuracy and recipe version in the
    metadata) loads back as the same network; a file of another recipe version is refused."""
    network, accuracy = train_digits_cnn(epochs=1)
    path = str(tmp_path / "cnn.safetensors")
    save_digits_classifier(path, network, accuracy)
    with safe_open(path, "pt") as f:
        assert float(f.metadata()["test_accuracy"]) == accuracy
        assert set(f.keys()) == set(network.state_dict())
    loaded = load_digits_classifier(path)
    trained = digits.DigitsClassifier(network, accuracy)
    images, _ = digits_arrays("test")
    assert np.array_equal(loaded.features(images), trained.features(images))
    assert np.array_equal(loaded.probabilities(images), trained.probabilities(images))
    assert loaded.test_accuracy == accuracy and loaded.features(images).shape == (180, digits.FEATURES)
    from safetensors.torch import save_file

    save_file(dict(network.state_dict()), str(tmp_path / "old.safetensors"), metadata={"test_accuracy": "0.9",
                                                                                      "version": "1"})
    with pytest.raises(ValueError, match="version 1, expected 2"):
        load_digits_classifier(str(tmp_path / "old.safetensors"))


@pytest.mark.slow  # trains the classifier with its full recipe (about 10-30 s)
def test_shipped_classifier_is_what_its_recipe_trains(classifier):
    """The weights the package ships: their recorded accuracy is their accuracy on the 180 held-out digits, and the
    recipe trained afresh on this machine (bit-identical only on the CPU that made the file) gives a classifier that
    agrees with them: accuracy within 2 points, the same class for >= 95% of the held-out digits, and a real-data
    floor within 5%."""
    images, labels = digits_arrays("test")
    shipped = classifier.probabilities(images).argmax(1)
    assert classifier.test_accuracy == pytest.approx((shipped == labels).mean(), abs=1e-12)
    assert classifier.test_accuracy > 0.95
    network, accuracy = train_digits_cnn()
    fresh = digits.DigitsClassifier(network, accuracy)
    assert abs(accuracy - classifier.test_accuracy) < 0.02
    assert (fresh.probabilities(images).argmax(1) == shipped).mean() >= 0.95
    everything, _ = digits_arrays("all")
    floors = [real_floor(c.features(everything) @ digits.whitening(c.features(everything)), 1000, kid=False)["fd_floor"]
              for c in (classifier, fresh)]
    assert abs(floors[1] / floors[0] - 1) < 0.05, floors
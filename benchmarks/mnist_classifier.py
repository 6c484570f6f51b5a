"""The MNIST metric's shipped classifier against its recipe: retrain ``MnistCNN`` with ``train_mnist_cnn`` (seeded,
one thread, about 3 minutes on one core) and compare with ``mnist_cnn_v1.safetensors`` that the package ships: the
held-out accuracy of both, the largest weight difference, and how often the two agree on the held-out digits.

    OMP_NUM_THREADS=1 python benchmarks/mnist_classifier.py

A recipe is bit-reproducible on one CPU, not across CPUs (float reductions differ by instruction set): on another
machine expect a small weight difference and the same accuracy within a few digits. The test suite checks the
shipped file's recorded accuracy (tests/test_mnist.py); this is the slower check that the recipe still makes it.
"""

import time

import numpy as np
import torch


def main():
    from ddpm_hf.evaluation.classifier_metric import Classifier
    from ddpm_hf.evaluation.mnist import SHAPE, load_mnist_classifier, mnist_arrays, train_mnist_cnn

    torch.set_num_threads(1)
    shipped = load_mnist_classifier()
    start = time.time()
    network, accuracy = train_mnist_cnn()
    seconds = time.time() - start
    retrained = Classifier(network, accuracy, SHAPE)
    state_a, state_b = shipped.network.state_dict(), network.state_dict()
    diff = max(float((state_a[k] - state_b[k]).abs().max()) for k in state_a)
    test, labels = mnist_arrays("test")
    agree = float(np.mean(shipped.probabilities(test).argmax(1) == retrained.probabilities(test).argmax(1)))
    print(f"retrained in {seconds:.0f} s on one thread")
    print(f"held-out accuracy: shipped {shipped.test_accuracy:.4f} (recorded), {shipped.accuracy(test, labels):.4f} "
          f"(measured now); retrained {accuracy:.4f}")
    print(f"largest weight difference {diff:.3g} (0: bit-identical); predictions agree on {agree:.1%} of the "
          "held-out digits")


if __name__ == "__main__":
    main()

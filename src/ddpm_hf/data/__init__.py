"""Training data: where images come from (``embedded``: the digits and MNIST that ship in installed packages;
``sources``: those, Hub datasets, local folders, decoding and
transforms to uint8 and [-1, 1]; ``labels``: the class-label column and class ids) and how they are cut into batches (``batches``: cached epochs or a shuffled stream,
sharded across processes, addressed by micro-batch index)."""

from .batches import EpochBatches, StreamBatches, embedded_name, prepare_data, step_seed
from .embedded import DIGITS, EMBEDDED, MNIST, load_digits_dataset, load_embedded_dataset, load_mnist_dataset
from .labels import class_names, find_label_column, label_ids, row_labels
from .sources import (GRAY_MODES, Unreadable, cache_images, dataset_source, decode, find_image_column,
                      fits_in_memory, image_name, image_to_uint8, infer_channels, load_image_dataset,
                      resize_and_crop, to_mode, to_model_range, undecoded)
from ..errors import MissingSplit

__all__ = [
    "DIGITS", "EMBEDDED", "GRAY_MODES", "MNIST", "EpochBatches", "MissingSplit", "StreamBatches", "Unreadable",
    "cache_images", "class_names", "dataset_source", "decode", "embedded_name", "find_image_column",
    "find_label_column", "fits_in_memory", "image_name", "image_to_uint8", "infer_channels", "label_ids",
    "load_digits_dataset", "load_embedded_dataset", "load_image_dataset", "load_mnist_dataset", "prepare_data",
    "resize_and_crop", "row_labels", "step_seed", "to_mode", "to_model_range", "undecoded",
]

"""Training batches: a cached uint8 tensor in a fresh permutation per epoch, or a shuffled stream; both sharded
across processes and addressed by micro-batch index, so a resumed run reads exactly the batches it would have read.
"""

import sys
import time

import numpy as np
import torch

from ..errors import MissingSplit, RunError, StreamFailed
from .embedded import EMBEDDED
from .labels import class_names, find_label_column, label_ids, row_labels
from .sources import Unreadable, cache_images, decode, find_image_column, fits_in_memory, image_name, image_to_uint8
from .sources import infer_channels, load_image_dataset, network_errors, undecoded


def step_seed(seed, *parts):
    """A 63-bit seed derived from ``seed`` and integers (rank, step, epoch, ...)."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochBatches:
    """Batches of a cached uint8 image tensor (N, C, H, W), in a fresh permutation each epoch seeded by (seed, epoch),
    sharded across processes, last partial batch dropped. ``batch(k)`` is micro-batch k of the whole run (micro-batch
    k % per_epoch of epoch k // per_epoch), so resuming at any step needs no iterator state. With ``labels`` (a (N,)
    long tensor of class ids, class-conditional runs), ``labels(k)`` gives the class ids of batch k's images."""

    def __init__(self, images, batch_size, seed, rank=0, world=1, labels=None):
        self.images, self.batch_size, self.seed, self.rank, self.world = images, batch_size, seed, rank, world
        self.class_ids = labels
        self.per_epoch = len(images) // (batch_size * world)
        if self.per_epoch < 1:
            raise RunError("the {count} training images are fewer than one batch of {train_batch_size} {size}{world}: "
                           "use {train_batch_size} {fits} or less, or more images", count=len(images),
                           size=batch_size, world=f" x {world} processes" if world > 1 else "",
                           fits=max(len(images) // world, 1))
        self._epoch, self._order = None, None
        self.transform_seconds = 0.0

    def _rows(self, k):
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(step_seed(self.seed, epoch))
            self._order = torch.randperm(len(self.images), generator=g)[self.rank :: self.world]
            self._epoch = epoch
        return self._order[i * self.batch_size : (i + 1) * self.batch_size]

    def batch(self, k):
        return self.images[self._rows(k)]

    def labels(self, k):
        """The class ids (B,) of batch k's images, or None for unlabelled data."""
        return None if self.class_ids is None else self.class_ids[self._rows(k)]


class StreamBatches:
    """Batches from an IterableDataset (``--streaming``), shuffled through a buffer of ``buffer_size`` images seeded
    by (seed, epoch) and reshuffled every epoch; the shards of the shuffled stream are split disjointly across
    processes (``datasets.distributed.split_dataset_by_node``). The epoch length is unknown, so ``per_epoch`` is None
    and ``batch(k)`` must be called with k = 0, 1, 2, ... (on resume the first k batches are read and skipped, which
    reproduces the same order). With ``label_column`` and ``names`` (class-conditional runs), ``labels(k)`` gives the
    class ids of batch k (call it after ``batch(k)``).

    A connection that fails mid-stream (after huggingface_hub's own retries) is retried up to ``retries`` times in a
    row, waiting ``retry_wait`` x 1, 2, 4, ... seconds: the epoch's stream is opened again with the same shuffle seed
    and the rows already read are passed over unread, so the images, their order and the run are the same as without
    the failure. Past that, ``StreamFailed``."""

    retries, retry_wait = 5, 1.0

    def __init__(self, dataset, image_column, resolution, channels, center_crop, batch_size, seed, rank, world,
                 buffer_size=1000, strict=False, label_column=None, names=None):
        from datasets.distributed import split_dataset_by_node

        self.label_column, self.names = label_column, names
        self.label_feature = dataset.features[label_column] if label_column else None

        dataset, _ = undecoded(dataset, image_column)  # decoded here, so that an unreadable file can be named
        self.unreadable = Unreadable(strict, "the stream")
        dataset = dataset.shuffle(seed=seed % 2**32, buffer_size=buffer_size)  # set_epoch(e) reseeds it with seed + e
        self.dataset = split_dataset_by_node(dataset, rank=rank, world_size=world) if world > 1 else dataset
        self.column, self.resolution, self.channels = image_column, resolution, channels
        self.center_crop, self.batch_size, self.seed, self.rank = center_crop, batch_size, seed, rank
        self.per_epoch, self._next, self._iter, self.epoch, self._last = None, 0, None, 0, None
        self._last_labels = None
        self.transform_seconds = 0.0  # transforms happen per batch, inside the training loop

    def _rows(self):
        network = network_errors()
        done, readable, failures = 0, 0, 0  # rows of this epoch handled (yielded or skipped), of them readable
        while True:
            self.dataset.set_epoch(self.epoch)
            try:
                for n, row in enumerate(self.dataset):
                    if n < done:  # read before the connection failed: the same row, passed over unread
                        continue
                    value = row[self.column]
                    try:
                        image = decode(value)
                    except network:
                        raise
                    except Exception as error:  # noqa: BLE001 - skipped and named (fatal with --strict)
                        self.unreadable.add(image_name(value, n), error)
                        done += 1
                        continue
                    done, readable, failures = done + 1, readable + 1, 0
                    yield image, (row[self.label_column] if self.label_column else None)
            except network as error:
                failures += 1
                text = str(error).strip()
                cause = f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"
                if failures > self.retries:
                    raise StreamFailed("the streamed dataset's connection failed {count} times in a row ({cause})",
                                       count=failures, cause=cause) from error
                wait = self.retry_wait * 2 ** (failures - 1)
                print(f"warning: the stream failed at image {done} of epoch {self.epoch} ({cause}); retrying in "
                      f"{wait:g} s ({failures} of {self.retries})", file=sys.stderr)
                time.sleep(wait)
                continue
            if readable == 0:
                raise RunError("the streamed dataset (this process's shard) holds no readable images")
            self.epoch, done, readable = self.epoch + 1, 0, 0

    def batch(self, k):
        if self._iter is None:
            self._iter = self._rows()
        if k < self._next - 1:
            raise ValueError(f"StreamBatches reads forwards only: asked for batch {k} after {self._next - 1}")
        while self._next <= k:
            rows = [next(self._iter) for _ in range(self.batch_size)]
            self._last = [image for image, _ in rows]
            self._last_labels = (label_ids([label for _, label in rows], self.label_feature, self.names, "the stream")
                                 if self.label_column else None)
            self._next += 1
        images = self._last  # batch k (read now, or the one read last time when asked again)
        rng = np.random.default_rng([self.seed, self.rank, k])  # batch k's crops: the same after a resume
        return torch.stack([image_to_uint8(im, self.resolution, self.channels, self.center_crop, rng)
                            for im in images])

    def labels(self, k):
        """The class ids (B,) of batch k (the batch read last, by ``batch(k)``), or None for unlabelled data."""
        if k != self._next - 1:
            raise ValueError(f"StreamBatches.labels({k}) after batch({self._next - 1}): call batch(k) first")
        return self._last_labels


def prepare_data(config, rank, world, progress=True):
    """The training batches, the held-out images (uint8, or None) for bits/dim, channels and resolution, for a
    TrainConfig (or any object with its data fields: dataset_name, train_data_dir, split, streaming, ...).

    Class-conditional runs (``config.class_conditional``): the label column is found by ``find_label_column`` (or
    ``label_column``); ``batches.class_names`` holds the class names in id order (None otherwise), ``batches.labels(k)``
    the class ids of batch k and ``batches.held_out_labels`` those of the held-out images ((M,) long, or None).
    ``batches.unreadable`` and ``batches.held_out_unreadable`` (``Unreadable``) name the files skipped as corrupt
    (a stream's grows as the stream reaches them); the run records their count in metrics.json and the card."""
    strict = getattr(config, "strict", False)
    conditional = getattr(config, "class_conditional", False)
    train = load_image_dataset(config.dataset_name, config.dataset_config_name, config.train_data_dir, config.cache_dir,
                               config.split, config.streaming)
    column = find_image_column(train, config.image_column)
    label_column = find_label_column(train, getattr(config, "label_column", None)) if conditional else None
    names = class_names(train, label_column) if conditional else None
    if not config.streaming and len(train) == 0:
        raise RunError("the {split} {value} of the data holds no images: give a dataset with images",
                       value=config.split)
    channels = config.channels or infer_channels(train, column)
    resolution = config.resolution
    if config.streaming:
        batches = StreamBatches(train, column, resolution, channels, config.center_crop, config.train_batch_size,
                                config.seed, rank, world, config.shuffle_buffer_size, strict, label_column, names)
    else:
        if not fits_in_memory(train, resolution, channels):
            raise RunError("the dataset does not fit in memory as uint8 tensors; use {streaming}")
        cache_start = time.time()
        unreadable = Unreadable(strict, config.split, "split")
        images, kept = cache_images(train, column, resolution, channels, config.center_crop, progress=progress,
                                    unreadable=unreadable, with_index=True)
        if len(images) == 0:
            raise RunError("no image of {split} {value} could be read: every file is corrupt", value=config.split)
        labels = row_labels(train, label_column, names, kept, f"the split {config.split}") if conditional else None
        batches = EpochBatches(images, config.train_batch_size, config.seed, rank, world, labels)
        batches.transform_seconds = time.time() - cache_start  # decoding and transforms, done once
        batches.unreadable = unreadable
    batches.class_names, batches.held_out_labels = names, None
    batches.held_out_unreadable = Unreadable(strict, config.eval_split, "eval_split")
    held_out = None
    if config.eval_split and not config.streaming:
        try:
            test = load_image_dataset(config.dataset_name, config.dataset_config_name, config.train_data_dir,
                                      config.cache_dir, config.eval_split)
        except (ValueError, KeyError, MissingSplit):
            test = None
        if test is not None and len(test):
            test = test.select(range(min(len(test), config.eval_max_images)))
            held_out, kept = cache_images(test, column, resolution, channels, center_crop=True, progress=False,
                                          unreadable=batches.held_out_unreadable, with_index=True)
            if conditional and len(held_out):
                if label_column not in (test.features or {}):
                    raise RunError("the {eval_split} {value} has no label column {column}, which the training split "
                                   "has: the conditional bound needs the labels", value=config.eval_split,
                                   column=repr(label_column))
                batches.held_out_labels = row_labels(test, label_column, names, kept,
                                                       f"the split {config.eval_split}")
            held_out = held_out if len(held_out) else None
    return batches, held_out, channels, resolution


def embedded_name(config):
    """The embedded dataset a run trains on ("digits" when no dataset or train_data_dir is given, or "mnist"), else
    None (a Hub dataset or a folder)."""
    from .sources import dataset_source

    source = dataset_source(config.dataset_name, config.train_data_dir)
    return source if source in EMBEDDED else None

"""Image datasets for training: the embedded digits, Hub datasets, local folders; transforms to [-1, 1] tensors.

Everything goes through Hugging Face ``datasets`` so that HF_ENDPOINT, the cache and streaming behave as users
expect. Small datasets are decoded and transformed once into a uint8 tensor (``cache_images``); random flips then
happen on batches in torch, which avoids per-item PIL work on every epoch.
"""

import os
import sys

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, MissingSplit, RunError
from .embedded import DIGITS, EMBEDDED, load_embedded_dataset

GRAY_MODES = ("L", "LA", "I", "I;16", "I;16B", "I;16L", "1", "F")


def dataset_source(dataset_name=None, train_data_dir=None):
    """Where ``load_image_dataset`` takes the data from: an embedded dataset's name ("digits", the default, or
    "mnist"), "local" (a folder) or "hub" (a repo id). The embedded names win over a folder of the same name in the
    working directory (often the run's own output folder): write ``./mnist`` for such a folder."""
    if train_data_dir is not None:
        return "local"
    if dataset_name is None or dataset_name in EMBEDDED:
        return dataset_name or DIGITS
    return "local" if os.path.isdir(dataset_name) else "hub"


def load_image_dataset(dataset_name=None, dataset_config_name=None, train_data_dir=None, cache_dir=None,
                       split="train", streaming=False):
    """The training split of an image dataset.

    Args:
        dataset_name: None or "digits" (the embedded default), "mnist" (5,000 embedded MNIST digits, ``embedded``),
            a local folder (a dataset saved with
            ``save_to_disk``, or images for the "imagefolder" builder), or a Hub repo id (``datasets.load_dataset``).
        train_data_dir: a folder of images (imagefolder), as in diffusers' train_unconditional.py.
        split: the split to train on; for the embedded datasets "train" or "test".
        streaming: return an ``IterableDataset``.
    """
    from datasets import DatasetDict, load_dataset, load_from_disk

    if train_data_dir is not None and dataset_name not in (None, DIGITS):
        raise ConfigError("give either {dataset_name} or {train_data_dir}, not both")
    source = dataset_source(dataset_name, train_data_dir)
    if source in EMBEDDED:
        data = load_embedded_dataset(source, split)
        return data.to_iterable_dataset() if streaming else data
    if source == "local":
        folder = train_data_dir or dataset_name
        if not os.path.isdir(folder):
            raise RunError("{train_data_dir} {folder}: no such folder; give a folder of images", folder=folder)
        saved = any(os.path.exists(os.path.join(folder, name)) for name in ("dataset_dict.json", "dataset_info.json"))
        if saved and train_data_dir is None:  # a dataset written by save_to_disk
            try:
                data = load_from_disk(folder)
            except Exception as error:  # noqa: BLE001 - datasets fails in many ways on an empty or damaged folder
                raise RunError("{folder}: the saved dataset cannot be loaded ({error}); it is empty or damaged: save it "
                               "again with save_to_disk, or give a folder of images", folder=folder,
                               error=f"{type(error).__name__}: {str(error).strip()[:200]}") from None
            if isinstance(data, DatasetDict):
                if split not in data:
                    raise MissingSplit("{split} {value}: {folder} has no such split; its splits: {splits}", value=split,
                                       folder=folder, splits=", ".join(data))
                data = data[split]
            return data.to_iterable_dataset() if streaming else data
        try:
            return load_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir, split=split, streaming=streaming)
        except ValueError as error:
            if "Unknown split" in str(error):
                raise MissingSplit("{split} {value}: {folder} has no such split ({error})", value=split, folder=folder,
                                   error=str(error)) from None
            if "corresponds to no data" in str(error):
                raise RunError("{folder} holds no image files (png, jpg, ...): give a folder of images",
                               folder=folder) from None
            raise
        except FileNotFoundError:  # datasets' EmptyDatasetError
            raise RunError("{folder} holds no image files (png, jpg, ...): give a folder of images",
                           folder=folder) from None
    if dataset_name.startswith((".", "/", "~")) or dataset_name.count("/") > 1:
        raise RunError("{dataset_name} {name}: no such folder (a local folder, a Hub dataset id namespace/name, "
                       "or digits)", name=dataset_name)
    try:
        return load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split, streaming=streaming)
    except ValueError as error:
        if "Unknown split" in str(error) or "Bad split" in str(error):
            raise MissingSplit("{split} {value}: {name} has no such split ({error})", value=split, name=dataset_name,
                               error=str(error)) from None
        raise
    except (OSError, ConnectionError) as error:  # DatasetNotFoundError is a FileNotFoundError; offline: ConnectionError
        raise RunError("{dataset_name} {name}: the dataset could not be loaded ({error}): check the name "
                       "(namespace/name on the Hub, or a local folder) and the network or HF_HUB_OFFLINE",
                       name=dataset_name, error=f"{type(error).__name__}: {str(error).strip()[:300]}") from None


def find_image_column(dataset, image_column=None):
    """The name of the image column: ``image_column`` if given (checked), else the first column whose feature is
    ``datasets.Image`` (cifar10 calls it "img", mnist "image")."""
    from datasets import Image as ImageFeature

    features = dataset.features or {}
    images = [name for name, feature in features.items() if isinstance(feature, ImageFeature)]
    if image_column is not None:
        if features and image_column not in features:
            raise RunError("{image_column} {column} is not a column; columns: {columns}{images}",
                           column=repr(image_column), columns=", ".join(features),
                           images="; image columns: " + ", ".join(images) if images else "")
        if features and not isinstance(features[image_column], ImageFeature):
            raise RunError("{image_column} {column} holds {kind} values, not images; {images}",
                           column=repr(image_column), kind=type(features[image_column]).__name__,
                           images="image columns: " + ", ".join(images) if images else "no column holds images")
        return image_column
    if images:
        return images[0]
    raise RunError("no image column found among the columns {columns}: the dataset holds no datasets.Image "
                   "column; pass {image_column} NAME, or give a folder of images",
                   columns=", ".join(features) or "(none)")


def undecoded(dataset, image_column):
    """``dataset`` with ``image_column`` left as {"bytes", "path"} (so a file that fails to decode can be named)."""
    from datasets import Image as ImageFeature

    features = dataset.features or {}
    if isinstance(features.get(image_column), ImageFeature) and features[image_column].decode:
        return dataset.cast_column(image_column, ImageFeature(decode=False)), True
    return dataset, False


def network_errors():
    """The exception classes of a lost or failing connection while reading remote data (huggingface_hub's HTTP
    errors after its own retries, httpx's and requests' transport errors, fsspec's timeouts, and the builtin
    ConnectionError and TimeoutError); a file that is read but does not decode is none of these."""
    found = [ConnectionError, TimeoutError]
    for module, name in (("huggingface_hub.errors", "HfHubHTTPError"), ("httpx", "TransportError"),
                         ("requests.exceptions", "RequestException"), ("fsspec.exceptions", "FSTimeoutError"),
                         ("aiohttp", "ClientError")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def decode(value):
    """A PIL image from a datasets Image value (PIL already, or {"bytes", "path"}), fully read (raises if corrupt)."""
    from datasets import Image as ImageFeature

    if isinstance(value, Image.Image):
        return value
    return ImageFeature().decode_example(value)  # as datasets decodes it (remote paths, EXIF orientation)


def image_name(value, index):
    if isinstance(value, dict) and value.get("path"):
        return value["path"]
    return f"image {index}"


class Unreadable:
    """Images that could not be decoded: skipped and counted (named in a warning), or fatal with ``strict``."""

    def __init__(self, strict=False, what="the data", setting=None):
        """``what``: the data, as a phrase ("the stream") or as the value of ``setting`` (e.g. "train" of "split")."""
        self.strict, self.names = strict, []
        self.what = f"--{setting} {what}" if setting else what  # the warnings, printed as the CLI spells the setting
        self.template, self.values = ("{%s} {what}" % setting if setting else "{what}"), {"what": what}

    def add(self, name, error):
        message = f"{name}: {type(error).__name__}: {str(error).strip()[:200]}"
        if self.strict:
            raise RunError("cannot read an image of " + self.template + ": {detail}. Remove or replace the file, or "
                           "leave out {strict} to skip unreadable images", detail=message, **self.values)
        self.names.append(name)
        print(f"warning: skipped an unreadable image of {self.what}: {message}", file=sys.stderr)

    def report(self, total):
        if self.names:
            print(f"warning: skipped {len(self.names)} of {total} images of {self.what} that could not be read "
                  f"(first: {self.names[0]}); the strict setting stops instead", file=sys.stderr)


def to_mode(image, channels):
    """Convert a PIL image to "L" (channels=1) or "RGB" (channels=3): palette and alpha images are composited on
    white, 16-bit grayscale is rescaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.round(array / top * 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


def infer_channels(dataset, image_column, look_at=64):
    """1 if the first ``look_at`` readable images are all grayscale (modes L, LA, I, I;16, 1, F), else 3 (a dataset
    that mixes grayscale and colour images trains in colour)."""
    data, _ = undecoded(dataset, image_column)
    seen = 0
    for row in data:
        try:
            mode = decode(row[image_column]).mode
        except Exception:  # noqa: BLE001 - unreadable images are reported when the images are read
            continue
        if mode not in GRAY_MODES:
            return 3
        seen += 1
        if seen >= look_at:
            break
    if seen == 0:
        raise RunError("no readable image in the dataset: it is empty, or every image file is corrupt")
    return 1


def resize_and_crop(image, resolution, center_crop=True, rng=None):
    """Resize the shorter side to ``resolution`` (bilinear; no-op when it already matches), then crop a square
    (centred, or at a random position drawn from ``rng``)."""
    w, h = image.size
    if min(w, h) != resolution:
        scale = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BILINEAR)
        w, h = image.size
    if center_crop or rng is None:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    else:
        left, top = int(rng.integers(0, w - resolution + 1)), int(rng.integers(0, h - resolution + 1))
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_uint8(image, resolution, channels, center_crop=True, rng=None):
    """A PIL image as a uint8 tensor (C, resolution, resolution)."""
    image = resize_and_crop(to_mode(image, channels), resolution, center_crop, rng)
    array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def to_model_range(batch_uint8, random_flip=False, generator=None):
    """uint8 (B, C, H, W) -> float32 in [-1, 1] (x / 127.5 - 1, the 256 levels of Ho eq. 13), flipping each image
    left-right with probability 1/2 when ``random_flip``."""
    x = batch_uint8.float().div_(127.5).sub_(1.0)
    if random_flip:
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
    return x


def cache_images(dataset, image_column, resolution, channels, center_crop=True, progress=True, unreadable=None,
                 with_index=False):
    """Decode and transform every image once into a uint8 tensor (N, C, resolution, resolution). Used when the
    dataset fits in memory; with random crops (``center_crop=False``) the crop is drawn once per image. Images that
    cannot be decoded are skipped and named (``unreadable``: an ``Unreadable``; with strict=True they are fatal).
    With ``with_index``, also the (n,) long tensor of the dataset rows the n images came from (for their labels)."""
    from tqdm.auto import tqdm

    unreadable = unreadable or Unreadable()
    rng = np.random.default_rng(0)
    out = torch.empty((len(dataset), channels, resolution, resolution), dtype=torch.uint8)
    column, _ = undecoded(dataset.select_columns([image_column]), image_column)
    n, kept = 0, torch.empty(len(dataset), dtype=torch.long)
    for i, row in enumerate(tqdm(column, desc="caching images", disable=not progress, leave=False)):
        value = row[image_column]
        try:
            image = decode(value)
        except Exception as error:  # noqa: BLE001 - any undecodable file is skipped (or fatal with --strict)
            unreadable.add(image_name(value, i), error)
            continue
        out[n], kept[n] = image_to_uint8(image, resolution, channels, center_crop, rng), i
        n += 1
    unreadable.report(len(dataset))
    return (out[:n], kept[:n]) if with_index else out[:n]


def fits_in_memory(dataset, resolution, channels, budget_bytes=2 << 30):
    return len(dataset) * channels * resolution * resolution <= budget_bytes

"""The standard FID/KID features: the 2048-d pool features of the TensorFlow Inception network of the original FID
code (``inception-2015-12-05``, Heusel et al. 2017), as NVIDIA's TorchScript port that StyleGAN2-ADA, EDM and
clean-fid use. It needs only torch (no torchvision, no torch-fidelity): the file carries the network.

The file is downloaded once to ``torch.hub.get_dir()/checkpoints/`` (the usual torch cache) or given with
its path (``inception_weights``). Its interface: ``net(images, return_features=True)`` with ``images`` a float tensor
(N, 3, H, W) of values in [0, 255]; the network resizes to 299x299 itself (TF1-compatible bilinear) and returns
(N, 2048).
"""

import os
import time

import torch

from ..errors import InceptionWeightsMissing

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_FILE = "inception-2015-12-05.pt"
FEATURES_NAME = "TF-Inception pool3 (inception-2015-12-05, 2048-d)"


def default_inception_path():
    return os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)


def inception_path(weights=None, download=True, timeout=10.0):
    """The Inception file to use: ``weights`` if given (must exist), else the cached file, else a download to the
    cache (``timeout`` seconds per network operation). Raises InceptionWeightsMissing naming the file and where to
    put it, within seconds when there is no network."""
    if weights:
        if not os.path.isfile(weights):
            raise InceptionWeightsMissing(f"inception_weights {weights}: no such file")
        return weights
    path = default_inception_path()
    if os.path.isfile(path):
        return path
    reason = "downloads disabled"
    if download and not os.environ.get("HF_HUB_OFFLINE"):
        import socket
        import urllib.request

        start = time.time()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.part"
        try:
            with urllib.request.urlopen(INCEPTION_URL, timeout=timeout) as response, open(tmp, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, path)
            return path
        except (OSError, socket.timeout) as error:  # URLError, DNS failure, refused, timed out
            reason = f"download failed after {time.time() - start:.1f} s: {error}"
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise InceptionWeightsMissing(
        f"FID/KID/precision-recall need the Inception weights file {INCEPTION_FILE} ({reason}). On a machine with a "
        f"network it is downloaded from {INCEPTION_URL} to {path}; copy it there, or give its path "
        "(inception_weights).")


class InceptionFeatures(torch.nn.Module):
    """(N, C, H, W) uint8 images (C = 1 or 3, any size) -> (N, 2048) Inception features. Grayscale is repeated to
    three channels, as StyleGAN2-ADA's metrics do."""

    num_features = 2048

    def __init__(self, path):
        import hashlib

        super().__init__()
        self.net = torch.jit.load(path, map_location="cpu").eval()
        with open(path, "rb") as f:  # names the file in cache keys: other weights, other cached features
            self.fingerprint = hashlib.sha256(f.read()).hexdigest()[:16]

    @torch.no_grad()
    def forward(self, images_uint8):
        if images_uint8.dtype != torch.uint8:
            raise ValueError("InceptionFeatures takes uint8 images in [0, 255]")
        x = images_uint8.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net(x, return_features=True).reshape(len(x), -1)


def load_inception(weights=None, download=True):
    return InceptionFeatures(inception_path(weights, download))


def image_features(extractor, images_uint8, batch_size=64, progress=False, desc="features"):
    """Features of uint8 images (N, C, H, W) in batches, as a float64 (N, D) tensor."""
    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, len(images_uint8), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(torch.as_tensor(extractor(images_uint8[start : start + batch_size])).double())
    return torch.cat(out)

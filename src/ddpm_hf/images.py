"""Pictures for people: sample grids and denoising strips, upscaled so an 8x8 digit is visible, and labelled."""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images):
    """(B, H, W, C) floats in [0, 1], or a list of PIL images, as a uint8 array (B, H, W, C)."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
        arrays = [np.asarray(im) for im in images]
        images = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
        return images.astype(np.uint8)
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, H, W, C), got {images.shape}")
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def _tile(array, tile):
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return image.resize((tile, tile * array.shape[0] // array.shape[1]), Image.NEAREST).convert("RGB")


def _labelled(canvas, title):
    if not title:
        return canvas
    font = ImageFont.load_default()
    lines = title.split("\n")
    height = 14 * len(lines) + 8
    out = Image.new("RGB", (canvas.width, canvas.height + height), "white")
    out.paste(canvas, (0, height))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, 4 + 14 * i), line, fill="black", font=font)
    return out


def make_grid(images, nrow=None, tile=64, pad=2, title=None):
    """A grid of images, each upscaled (nearest neighbour) to ``tile`` pixels wide, with a title band on top.

    Args:
        images: (B, H, W, C) floats in [0, 1] or a list of PIL images.
        nrow: images per row (default: about square).
        tile: width of each upscaled image in pixels.
        title: text drawn above the grid (may hold newlines).
    Returns:
        an RGB PIL image.
    """
    arrays = to_uint8(images)
    count = len(arrays)
    nrow = nrow or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / nrow)
    tiles = [_tile(a, tile) for a in arrays]
    w, h = tiles[0].size
    canvas = Image.new("RGB", (nrow * (w + pad) + pad, rows * (h + pad) + pad), (128, 128, 128))
    for i, t in enumerate(tiles):
        canvas.paste(t, (pad + (i % nrow) * (w + pad), pad + (i // nrow) * (h + pad)))
    return _labelled(canvas, title)


def make_strip(chain, timesteps, columns=10, rows=8, tile=64, title=None):
    """A denoising strip: rows are images, columns are states x_T ... x_0 picked evenly from the chain, each column
    labelled with its timestep.

    Args:
        chain: list of (B, H, W, C) arrays in [0, 1]: x_T first, then the state after each reverse step.
        timesteps: the reverse-step timesteps (len(chain) - 1 of them); chain[k] is the state at timesteps[k].
        columns: how many states to show.
        rows: how many images (the first ones) to show.
    """
    chain = [to_uint8(x)[:rows].astype(np.float64) / 255 for x in chain]
    picks = np.unique(np.linspace(0, len(chain) - 1, min(columns, len(chain))).round().astype(int))
    # chain[k] is x at timesteps[k] (chain[0] = x_T) and the last entry is the sample x_0
    labels = [f"t={int(t)}" for t in timesteps] + ["x_0"]
    grid = np.concatenate([to_uint8(chain[k])[:, None] for k in picks], axis=1)  # (B, columns, H, W, C)
    body = make_grid(grid.reshape(-1, *grid.shape[2:]).astype(np.float64) / 255, nrow=len(picks), tile=tile)
    header = Image.new("RGB", (body.width, 16), "white")
    draw = ImageDraw.Draw(header)
    for j, k in enumerate(picks):
        draw.text((2 + j * (tile + 2) + 2, 2), labels[k], fill="black", font=ImageFont.load_default())
    out = Image.new("RGB", (body.width, body.height + 16), "white")
    out.paste(header, (0, 0))
    out.paste(body, (0, 16))
    return _labelled(out, title)

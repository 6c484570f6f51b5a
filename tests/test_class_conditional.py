"""Class-conditional training (Ho & Salimans 2022, classifier-free guidance): where the labels come from, the null
class and its label dropout, that the loss and the bound see the labels, and conditional runs as users start them
(real processes, real files: resume, two processes, streaming)."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpm_hf import DDPMHFPipeline
from ddpm_hf.cli.train import parse_args
from ddpm_hf.conditioning import drop_labels, null_class_id
from ddpm_hf.data import (class_names, find_label_column, load_digits_dataset, load_image_dataset, prepare_data,
                          step_seed, to_model_range)
from ddpm_hf.errors import RunError
from ddpm_hf.scheduling_ddpm_hf import DDPMHFScheduler
from ddpm_hf.unet_configs import build_unet

from helpers import TINY, TRAIN, kill_after_checkpoint, read_history, read_weights, run_train, train_env

# one grey level per class, so that a test can read an image's class from its pixels
SHADES = {"cat": 30, "dog": 120, "zebra": 220}


def class_folders(root, per_class=6, size=(10, 9), flat=False):
    """An image folder with one sub-folder per class of SHADES (or, ``flat``, all images in ``root`` itself), each
    image a uniform grey of its class's shade."""
    from PIL import Image

    for name, shade in SHADES.items():
        folder = root if flat else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((size[1], size[0]), shade, np.uint8), mode="L").save(folder / f"{name}{i}.png")
    return root


def data_args(**values):
    """What prepare_data reads of a TrainConfig."""
    base = dict(dataset_name=None, dataset_config_name=None, train_data_dir=None, cache_dir=None, split="train",
                eval_split="", streaming=False, image_column=None, channels=None, resolution=8, center_crop=True,
                train_batch_size=4, seed=0, shuffle_buffer_size=100, eval_max_images=50, class_conditional=True,
                label_column=None)
    return SimpleNamespace(**{**base, **values})


def shade_ids(images):
    """The class id of each uniform grey image (B, 1, H, W), read from its pixels."""
    index = {shade: i for i, shade in enumerate(SHADES.values())}
    return torch.tensor([index[int(image.float().mean().round())] for image in images])


# ------------------------------------------------------------------------------------------- where labels come from


def test_label_column_found_by_type_or_name():
    from datasets import ClassLabel, Dataset, Features, Image, Value

    digits = load_digits_dataset()["train"]
    assert find_label_column(digits) == "label"
    assert class_names(digits, "label") == tuple(str(k) for k in range(10))

    pixels = [np.zeros((4, 4), np.uint8)] * 4
    features = Features({"picture": Image(), "number": Value("int64"), "kind": ClassLabel(names=["b", "a"]),
                         "word": Value("string")})
    data = Dataset.from_dict({"picture": pixels, "number": [30, 4, 30, 7], "kind": [1, 0, 0, 1],
                              "word": ["x", "y", "x", "x"]}, features=features)
    assert find_label_column(data) == "kind"  # the ClassLabel, whatever its name
    assert class_names(data, "kind") == ("b", "a")  # its own order, kept
    assert find_label_column(data, "number") == "number"
    assert class_names(data, "number") == ("4", "7", "30")  # integers numbered in numeric order
    assert class_names(data, "word") == ("x", "y")
    with pytest.raises(RunError) as error:
        find_label_column(data, "colour")
    message = str(error.value)
    assert "colour" in message and "picture (Image)" in message and "number (int64)" in message
    with pytest.raises(RunError, match="holds Image values"):
        find_label_column(data, "picture")


def test_no_label_column_is_an_error_naming_the_columns(tmp_path):
    """A folder without class sub-folders has no labels: the library error names the columns there are and the
    settings (not flags)."""
    flat = class_folders(tmp_path / "flat", per_class=2, flat=True)
    with pytest.raises(RunError) as error:
        prepare_data(data_args(train_data_dir=str(flat)), 0, 1, progress=False)
    assert "image (Image)" in str(error.value) and "class_conditional" in str(error.value)
    assert "--" not in str(error.value)


@pytest.mark.slow  # a CLI subprocess
def test_train_without_labels_stops_at_start(tmp_path):
    """``ddpm-hf train --class_conditional`` on a folder without class sub-folders: exit code 2, the message names
    the columns and the flags, and nothing is written."""
    flat = class_folders(tmp_path / "flat", per_class=2, flat=True)
    r = subprocess.run([sys.executable, TRAIN, *TINY, "--class_conditional", "--train_data_dir", str(flat),
                        "--resolution", "8", "--output_dir", str(tmp_path / "run")], cwd=tmp_path, env=train_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--class_conditional needs a class-label column" in r.stderr and "image (Image)" in r.stderr
    assert "--label_column" in r.stderr and not (tmp_path / "run").exists()


def test_class_conditional_flag_defaults():
    """(The flags' errors are rows of test_bad_input's table.)"""
    config = parse_args(["--class_conditional"])
    assert config.cond_drop_prob == 0.1 and config.label_column is None and config.guidance_scale is None


@pytest.mark.parametrize("streaming", [False, True])
def test_image_folder_sub_folders_are_the_classes(tmp_path, streaming):
    """A folder with one sub-folder per class: the classes are the sub-folder names, as datasets' imagefolder
    numbers them, and every batch's labels are the classes of its images (cached and streamed, two ranks)."""
    root = class_folders(tmp_path / "pets")
    assert load_image_dataset(train_data_dir=str(root)).features["label"].names == list(SHADES)
    for rank in (0, 1):
        batches, _, channels, _ = prepare_data(data_args(train_data_dir=str(root), streaming=streaming), rank, 2,
                                               progress=False)
        assert batches.class_names == tuple(SHADES) and channels == 1
        seen = []
        for k in range(4):
            images = batches.batch(k)
            labels = batches.labels(k)
            assert labels.dtype == torch.long and torch.equal(labels, shade_ids(images))
            seen += labels.tolist()
        assert len(set(seen)) > 1


def test_held_out_labels_are_those_of_the_images_read():
    """The digits' held-out images come with their own labels (the 18 per class of the test split)."""
    batches, held_out, _, _ = prepare_data(data_args(eval_split="test", eval_max_images=180, train_batch_size=64),
                                           0, 1, progress=False)
    test = load_digits_dataset()["test"]
    assert torch.equal(batches.held_out_labels, torch.tensor(test["label"]))
    assert len(held_out) == 180 and torch.equal(batches.labels(0), batches.class_ids[batches._rows(0)])
    assert batches.class_ids.bincount().tolist() == np.bincount(load_digits_dataset()["train"]["label"]).tolist()


# ------------------------------------------------------------------------------------------------ the null class


def test_cond_drop_rate_is_p_uncond_and_seeded():
    """Over n labels, the number replaced by the null class is Binomial(n, p) (Ho & Salimans 2022, Algorithm 1):
    within 5 standard deviations of n p; the labels kept are unchanged; the draws repeat with the seed."""
    n, null = 200_000, 10
    labels = torch.arange(n) % 10
    for p in (0.1, 0.3):
        out = drop_labels(labels, null, p, torch.Generator().manual_seed(1))
        dropped = int((out == null).sum())
        assert abs(dropped - n * p) < 5 * math.sqrt(n * p * (1 - p)), (p, dropped)
        kept = out != null
        assert torch.equal(out[kept], labels[kept])
        assert torch.equal(out, drop_labels(labels, null, p, torch.Generator().manual_seed(1)))
        assert not torch.equal(out, drop_labels(labels, null, p, torch.Generator().manual_seed(2)))
    assert torch.equal(drop_labels(labels, null, 0.0, torch.Generator().manual_seed(1)), labels)


def test_null_class_id_is_read_from_the_unet_config():
    assert null_class_id(build_unet("cpu-8", num_class_embeds=4)) == 3 and null_class_id(build_unet("cpu-8")) is None


@pytest.mark.parametrize("recipe", sorted(__import__("ddpm_hf.recipes", fromlist=["RECIPES"]).RECIPES))
def test_every_recipe_gets_the_null_class(recipe, tmp_path):
    """Each recipe's UNet (and a --model_config_name_or_path one) gets K + 1 class embeddings; the cpu-8 one is built
    and takes labels 0..K."""
    from diffusers import UNet2DModel

    from ddpm_hf.training.config import TrainConfig
    from ddpm_hf.training.model_setup import unet_config_for_data, unet_for_data

    config = TrainConfig.create(recipe=recipe, class_conditional=True, class_names=("a", "b", "c"))
    unet = unet_config_for_data(config, 3, config.resolution)
    assert unet["num_class_embeds"] == 4 and unet["class_embed_type"] is None
    build_unet("cpu-8").save_config(tmp_path)  # a given config, not a preset
    given = TrainConfig.create(recipe=recipe, class_conditional=True, class_names=("a", "b", "c"), resolution=8,
                               model_config_name_or_path=str(tmp_path))
    model = unet_for_data(given, 1, 8)
    assert isinstance(model, UNet2DModel) and model.class_embedding.num_embeddings == 4
    with torch.no_grad():
        out = model(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), class_labels=torch.arange(4)).sample
    assert out.shape[1] == (2 if given.variance_type == "learned_range" else 1)


# ------------------------------------------------------------------------------------------------ loss and bound


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_training_loss_is_conditional_and_drops_from_the_micro_batch_generator():
    """L_hybrid (learned variances) of a micro-batch: the labels reach the UNet (other labels, another loss), and the
    loss is that of Ho & Salimans' Algorithm 1 with the null-class draws taken from micro-batch k's generator right
    after t, recomputed here step by step."""
    from accelerate.state import AcceleratorState

    from ddpm_hf.losses import diffusion_loss
    from ddpm_hf.training.config import TrainConfig
    from ddpm_hf.training.loop import algorithm1_step

    config = TrainConfig.create(class_conditional=True, class_names=tuple("0123456789"), cond_drop_prob=0.3,
                                ddpm_num_steps=50, ddpm_num_inference_steps=10, seed=5)
    torch.manual_seed(0)
    unet = build_unet("cpu-8", learned_variance=True, num_class_embeds=11)
    with torch.no_grad():
        unet.class_embedding.weight.normal_(0, 1)  # so that a label changes the output (zeros would not)
    scheduler = DDPMHFScheduler(num_train_timesteps=50, beta_schedule=config.ddpm_beta_schedule,
                                variance_type="learned_range")
    raw = load_digits_dataset()["test"].select(range(32))
    from ddpm_hf.data import cache_images

    raw = cache_images(raw, "image", 8, 1, progress=False)
    labels = torch.arange(32) % 10
    accelerator = _accelerator()
    try:
        loss, _, vlb, t = algorithm1_step(config, accelerator, unet, scheduler, raw, rank=1, k=7, labels=labels)
        other, _, _, _ = algorithm1_step(config, accelerator, unet, scheduler, raw, rank=1, k=7,
                                         labels=(labels + 1) % 10)
    finally:
        AcceleratorState._reset_state(True)
    assert vlb is not None and loss.item() != other.item()

    g = torch.Generator().manual_seed(step_seed(config.seed, 1, 7))
    torch.manual_seed(step_seed(config.seed, 1, 7, 1))
    x0 = to_model_range(raw, config.random_flip, g)
    noise = torch.randn(x0.shape, generator=g)
    t_here = torch.randint(0, 50, (32,), generator=g)
    dropped = torch.rand(32, generator=g) < 0.3
    y = torch.where(dropped, torch.full_like(labels, 10), labels)
    assert torch.equal(t, t_here) and 0 < int(dropped.sum()) < 32
    noisy = scheduler.add_noise(x0, noise, t_here)
    expected, _, _ = diffusion_loss(scheduler, unet(noisy, t_here, class_labels=y).sample, x0, noisy, noise, t_here,
                                    None, config.vlb_weight)
    assert loss.item() == expected.item()


def test_bound_is_conditional_on_the_labels_given():
    """bits/dim (Ho eq. 5) of a conditional UNet: the labels reach every term (full bound and stratified estimate),
    and the same labels with the same noise give the same numbers."""
    from ddpm_hf.evaluation.bound import held_out_bits, stratified_bits

    torch.manual_seed(0)
    unet = build_unet("cpu-8", num_class_embeds=4).eval()
    with torch.no_grad():
        unet.class_embedding.weight.normal_(0, 1)
    scheduler = DDPMHFScheduler(num_train_timesteps=10)
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    a, b = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([3, 3, 3, 3, 3, 3])
    with torch.no_grad():
        full_a = held_out_bits(unet, scheduler, images, 4, seed=0, labels=a)
        assert torch.equal(full_a, held_out_bits(unet, scheduler, images, 4, seed=0, labels=a))
        assert not torch.allclose(full_a[:, 0], held_out_bits(unet, scheduler, images, 4, seed=0, labels=b)[:, 0])
        # each batch gets its own images' labels: changing the second batch's labels changes its rows only
        c = torch.tensor([0, 1, 2, 3, 3, 3])
        full_c = held_out_bits(unet, scheduler, images, 3, seed=0, labels=c)
        full_a3 = held_out_bits(unet, scheduler, images, 3, seed=0, labels=a)
        assert torch.equal(full_c[:3], full_a3[:3]) and not torch.allclose(full_c[3:, 0], full_a3[3:, 0])
        sa = stratified_bits(unet, scheduler, images, 4, seed=0, num_timesteps=4, labels=a)[0]
        sb = stratified_bits(unet, scheduler, images, 4, seed=0, num_timesteps=4, labels=b)[0]
        assert not torch.allclose(sa[:, 0], sb[:, 0])
        # term by term: every L_{t-1} (decoder t = 0 included) with labels a is the term of a model that has a built
        # in (so each term's UNet call got the labels), and every term moves when the labels change
        from ddpm_hf.data import to_model_range
        from ddpm_hf.likelihood import bits_per_dim

        x = to_model_range(images)
        labels_a = torch.tensor([0, 1, 2, 0, 1, 2])
        given = bits_per_dim(unet, scheduler, x, torch.Generator().manual_seed(1), progress=False,
                             class_labels=labels_a)
        built_in = bits_per_dim(lambda x_t, t: unet(x_t, t, class_labels=labels_a), scheduler, x,
                                torch.Generator().manual_seed(1), progress=False)
        other = bits_per_dim(unet, scheduler, x, torch.Generator().manual_seed(1), progress=False,
                             class_labels=torch.full((6,), 3))
        assert given.terms.shape == (6, 10) and torch.equal(given.terms, built_in.terms)
        assert bool((given.terms != other.terms).all())  # each image, each of the T terms


# ------------------------------------------------------------------------------------------------ runs


def _conditional_bpd(folder, num_images, labels, ranks=1):
    """The held-out bits/dim of a saved conditional run recomputed here with ddpm_hf.likelihood's full bound: the
    first ``num_images`` test digits with class ids ``labels``, rank r's share with the noise seed r, as the run
    splits it."""
    from ddpm_hf.data import cache_images
    from ddpm_hf.likelihood import bits_per_dim

    pipe = DDPMHFPipeline.from_pretrained(folder)
    images = cache_images(load_digits_dataset()["test"].select(range(num_images)), "image", 8, 1, progress=False)
    with torch.no_grad():
        totals = [bits_per_dim(pipe.unet.eval(), pipe.scheduler, to_model_range(images[r::ranks]),
                               generator=torch.Generator().manual_seed(r), progress=False,
                               class_labels=labels[r::ranks]).total for r in range(ranks)]
    return torch.cat(totals).mean().item()


@pytest.mark.slow
def test_conditional_run_saves_its_classes_and_the_conditional_bound(tmp_path):
    """A tiny conditional run on the digits: the UNet has K + 1 class embeddings, model_index.json the class names
    and the null id, training_args.json the names; bits/dim at the end is the bound with the true labels given,
    not with the null class; the card says it is conditional."""
    out = tmp_path / "run"
    run_train("--class_conditional", "--max_train_steps", "3", "--output_dir", str(out), "--checkpointing_steps",
              "100", "--guidance_scale", "2.5", cwd=tmp_path)
    unet = json.loads((out / "unet" / "config.json").read_text())
    index = json.loads((out / "model_index.json").read_text())
    assert unet["num_class_embeds"] == 11 and index["null_class_id"] == 10
    assert index["guidance_scale"] == 2.5  # --guidance_scale: the pipeline's default, saved with it
    assert index["id2label"] == {str(k): str(k) for k in range(10)}
    pipe = DDPMHFPipeline.from_pretrained(out)
    assert pipe.config.null_class_id == 10 and pipe.config.id2label[7] == "7"
    assert pipe._guidance_scale(None, [3]) == 2.5
    args = json.loads((out / "training_args.json").read_text())
    assert args["class_names"] == [str(k) for k in range(10)] and args["cond_drop_prob"] == 0.1

    metrics = json.loads((out / "metrics.json").read_text())
    labels = torch.tensor(load_digits_dataset()["test"]["label"][:16])
    assert metrics["bits_per_dim"] == pytest.approx(_conditional_bpd(out, 16, labels), rel=1e-6)
    assert metrics["bits_per_dim"] != pytest.approx(_conditional_bpd(out, 16, torch.full((16,), 10)), rel=1e-6)
    card = (out / "README.md").read_text()
    assert "conditional variational bound" in card and "class-conditional on 10 classes" in card
    assert "the pipeline's default guidance scale 2.5, saved with it" in card
    assert "guidance_scale in diffusers' convention (1: none; this model's default: 2.5)" in card
    # a table row: p(x | y)'s bar escaped, or it would split the cell
    (row,) = [line for line in card.splitlines() if "conditional variational bound" in line]
    assert row.count("|") - row.count("\\|") == 3
    # the end's samples: one row per class, max(1, 4 // 10) = 1 image each (TINY's --num_sample_images 4)
    assert sorted(os.listdir(out / "samples")) == sorted(["grid.png", "strip.png"] + [f"sample_{i:04d}.png"
                                                                                     for i in range(10)])

    # `evaluate` of the saved model: the same conditional bound on the same images with the same noise
    from ddpm_hf.evaluation import EvaluationConfig, evaluate

    report = evaluate(str(out), EvaluationConfig(metrics=("bpd",), max_eval_images=16, output_dir=str(tmp_path / "e")),
                      progress=False, log=lambda *_: None)
    assert report["bpd"]["conditional"] is True and report["bpd"]["num_images"] == 16
    assert report["bpd"]["bits_per_dim"] == pytest.approx(metrics["bits_per_dim"], rel=1e-9)


# streamed only: the cached-data resume is test_training's (the same loop; the labels are what this one adds, and the
# streamed path, labels read from the folders and shuffled with the images, is the harder one for them)
@pytest.mark.slow
@pytest.mark.parametrize("data", ["streamed"])
def test_conditional_resume_is_bit_identical(tmp_path, data):
    """A conditional run (label dropout 0.5, learned variances) killed after its step-4 checkpoint and resumed to
    step 8 ends with the weights and losses of the run that never stopped, streamed from an image folder with one
    sub-folder per class (whose names the saved pipeline keeps)."""
    common = ["--class_conditional", "--cond_drop_prob", "0.5", "--max_train_steps", "8", "--checkpointing_steps",
              "4", "--eval_max_images", "1", "--num_sample_images", "1"]
    if data == "streamed":
        images = class_folders(tmp_path / "pets")
        common += ["--train_data_dir", str(images), "--streaming", "--resolution", "8", "--random_flip",
                   "--train_batch_size", "4"]
    run_train("--output_dir", str(tmp_path / "straight"), *common, cwd=tmp_path)
    stopped = tmp_path / "stopped"
    kill_after_checkpoint(["--output_dir", str(stopped), *common], stopped, tmp_path)
    r = run_train("--output_dir", str(stopped), *common, "--resume_from_checkpoint", "latest", cwd=tmp_path)
    assert "resumed from" in r.stdout + r.stderr

    a, b = read_weights(tmp_path / "straight"), read_weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in read_history(tmp_path / "straight")] == [h["loss"] for h in read_history(stopped)]
    if data == "streamed":
        index = json.loads((stopped / "model_index.json").read_text())
        assert index["id2label"] == {"0": "cat", "1": "dog", "2": "zebra"} and index["null_class_id"] == 3
        assert a["class_embedding.weight"].shape[0] == 4


@pytest.mark.slow
def test_conditional_two_processes(tmp_path):
    """torchrun with 2 processes (fixed variances, L_simple): the ranks hold the same weights, read different data,
    and the held-out bound is split across them with each image's own label (recomputed here); resumed with two
    processes from its step-2 checkpoint, it ends with the same weights and losses (each rank's label dropout drawn
    again from its micro-batch generators)."""
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run_train("--class_conditional", "--output_dir", str(out), "--max_train_steps", "3", "--checkpointing_steps", "2",
              "--eval_max_images", "15", "--variance_type", "fixed_large", "--eval_steps", "2", cwd=tmp_path,
              launcher=launcher)
    assert "eval/bits_per_dim" in read_history(out)[1]  # the periodic conditional bound, on both ranks
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["weights_identical_across_ranks"] is True
    assert metrics["first_batches_distinct_across_ranks"] is True and metrics["num_images"] == 15
    labels = torch.tensor(load_digits_dataset()["test"]["label"][:15])
    assert metrics["bits_per_dim"] == pytest.approx(_conditional_bpd(out, 15, labels, ranks=2), rel=1e-6)
    assert json.loads((out / "model_index.json").read_text())["null_class_id"] == 10
    straight, losses = read_weights(out), [h["loss"] for h in read_history(out)]
    r = run_train("--class_conditional", "--output_dir", str(out), "--max_train_steps", "3", "--checkpointing_steps",
                  "2", "--eval_max_images", "15", "--variance_type", "fixed_large", "--eval_steps", "2",
                  "--resume_from_checkpoint", "checkpoint-2", cwd=tmp_path, launcher=launcher)
    assert "resumed from" in r.stdout + r.stderr
    resumed = read_weights(out)
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [h["loss"] for h in read_history(out)] == losses

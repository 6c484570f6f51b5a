"""Model cards: written by training runs, re-rendered by `ddpm-hf card`, pushed by `ddpm-hf push` to a loopback Hub,
read back with huggingface_hub and loaded from the pushed repo with diffusers' remote code."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from ddpm_hf import DDPMHFPipeline
from ddpm_hf.model_card import card_text, edited_by_hand, model_card

from helpers import (TINY, TINY_RUN_REPO, TINY_RUN_TOKEN, cli_in_process, cli_subprocess, png_folder, run_train,
                     train_env)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _linked_images(card_text):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card_text)


def _files(folder):
    return {os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/") for d, _, fs in os.walk(folder)
            for f in fs if not f.startswith(".")}


@pytest.mark.slow
def test_digits_run_card(trained_run):
    """The card of the session's tiny run (helpers.TINY_RUN: 6 steps, --hub_model_id ns/tiny, a --hub_token)."""
    out = trained_run
    metrics = json.loads((out / "metrics.json").read_text())
    path = out / "README.md"
    text = path.read_text()
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "diffusers" and data.pipeline_tag == "unconditional-image-generation"
    assert {"ddpm", "ddpm-hf", "diffusers"} <= set(data.tags) and data.license == "cc-by-4.0"
    assert data.model_name == "tiny" and not data.datasets  # digits are not a Hub dataset
    (result,) = data.eval_results
    assert result.metric_type == "bits_per_dim" and result.dataset_split == "test"
    assert result.metric_value == round(metrics["bits_per_dim"], 3)
    # the numbers in the text are the run's, counted independently here
    pipe = DDPMHFPipeline.from_pretrained(out)
    assert f"{pipe.unet.num_parameters():,} parameters" in text
    assert f"{metrics['bits_per_dim']:.3f}** +- {metrics['bits_per_dim_stderr']:.3f}" in text
    assert f"{metrics['train_images']:,} images of the UCI digits" in text and metrics["train_images"] == 1617
    assert "T = 20," in text and "6 (96 images seen)" in text and "on cpu" in text
    assert f'from_pretrained("{TINY_RUN_REPO}", trust_remote_code=True)' in text
    # pictures: linked relative to the card, present, upscaled so an 8x8 digit is visible
    links = _linked_images(text)
    assert links == ["images/samples.png", "images/denoising.png", "images/loss.png"]
    for link in links:
        with Image.open(out / link) as image:
            assert image.width >= 64 and image.height >= 64
    # nothing of the machine or the login
    assert TINY_RUN_TOKEN not in text and str(out.parent) not in text and os.path.expanduser("~") + os.sep not in text


def _without_stamp(text):
    """The card without its last line, the stamp of write_model_card (a hash of the text above it)."""
    body, stamp = text.rstrip("\n").rsplit("\n", 1)
    assert stamp.startswith("<!-- ddpm-hf card; sha256 of the text above: "), stamp
    return body


@pytest.mark.slow
def test_local_folder_card_and_cli_rerender(tmp_path, capsys):
    images = png_folder(tmp_path / "my-faces", mode="RGB")
    (images / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 4)  # skipped, counted
    out = tmp_path / "run"
    run_train("--train_data_dir", str(images), "--resolution", "8", "--output_dir", str(out), "--max_train_steps", "2",
           "--train_batch_size", "4", "--checkpointing_steps", "100", "--variance_type", "fixed_small",
           "--num_sample_images", "2", cwd=tmp_path)
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert not card.data.datasets and card.data.license is None and not card.data.eval_results
    assert "a local image folder (`my-faces`)" in text and str(tmp_path) not in text
    assert "not computed (no held-out split)" in text and 'mode "RGB"' in text and "variances are fixed" in text
    assert 'from_pretrained("path/to/this/folder"' in text
    skipped = json.loads((out / "metrics.json").read_text())["unreadable_images_skipped"]
    assert skipped == {"train": 1, "held_out": 0, "first": ["broken.png"]}
    assert "| unreadable files skipped | 1 training, 0 held-out (first: broken.png) |" in text
    # `ddpm-hf card` re-renders it for a repo id; the same run gives the same card otherwise
    code, _, err = cli_in_process(capsys, "card", out, "--hub_model_id", "ns/faces-8")
    assert code == 0, err
    again = (out / "README.md").read_text()
    assert 'from_pretrained("ns/faces-8"' in again and ModelCard.load(out / "README.md").data.model_name \
        == "faces-8"
    assert _without_stamp(again).replace('"ns/faces-8"', '"path/to/this/folder"').replace(
        "faces-8", "ddpm-my-faces-8") == _without_stamp(text)
    # a folder that is not a finished run: one clear error
    code, _, err = cli_in_process(capsys, "card", tmp_path / "my-faces")
    assert code == 2 and "is not a finished training run" in err
    # a run of the old layout (pipeline in run/pipeline/): sampling it still works, card and push say what it is
    old = tmp_path / "old_run"
    shutil.copytree(out, old)
    (old / "pipeline").mkdir()
    for name in ("model_index.json", "unet", "scheduler", "pipeline_ddpm_hf.py", "README.md", "images"):
        shutil.move(old / name, old / "pipeline" / name)
    code, _, err = cli_in_process(capsys, "sample", old / "pipeline", "--num_images", "1", "--num_inference_steps",
                                  "2", "--output_dir", tmp_path / "old_samples")
    assert code == 0, err[-2000:]
    assert (tmp_path / "old_samples" / "grid.png").is_file()
    for command in (["card", old], ["push", old, "--hub_model_id", "ns/old"]):
        code, _, err = cli_in_process(capsys, *command)
        assert code == 2 and "older ddpm-hf" in err and "Traceback" not in err


@pytest.mark.slow
def test_push_run_with_card_over_loopback(tmp_path):
    """`ddpm-hf train --push_to_hub` uploads the pipeline with its card and pictures; a fresh client reads the card
    with huggingface_hub and loads the repo with DiffusionPipeline.from_pretrained(..., trust_remote_code=True)."""
    from hub_server import HubServer

    out = tmp_path / "run"
    with HubServer(tmp_path / "hub") as hub:
        env = hub.client_env(tmp_path / "hf_home")
        env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), *TINY, "--output_dir",
                            str(out), "--max_train_steps", "2", "--checkpointing_steps", "1", "--logger", "tensorboard",
                            "--logging_dir", "tb", "--push_to_hub",
                            "--hub_model_id", "ns/digits-tiny"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert hub.repo_exists("ns/digits-tiny")
        # the pipeline, card, pictures and records go up; checkpoints, logs (--logging_dir tb), samples and history
        # stay local
        stored = _files(hub.repo_dir("ns/digits-tiny"))
        assert {"README.md", "model_index.json", "pipeline_ddpm_hf.py", "scheduler/scheduling_ddpm_hf.py",
                "unet/diffusion_pytorch_model.safetensors", "images/samples.png", "metrics.json",
                "training_args.json"} <= stored
        assert (out / "checkpoint-1").is_dir() and any((out / "tb").rglob("events.out.tfevents.*"))
        assert (out / "history.jsonl").is_file()
        assert not [f for f in stored if f.startswith(("checkpoint-", "tb/", "samples/")) or f in (
            "history.jsonl", "loss.png")]
        code = """
import json, sys, numpy as np, torch
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard, hf_hub_download
card = ModelCard.load("ns/digits-tiny")
grid = hf_hub_download("ns/digits-tiny", "images/samples.png")
pipe = DiffusionPipeline.from_pretrained("ns/digits-tiny", trust_remote_code=True)
images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images
print(json.dumps({"name": card.data.model_name, "bits": card.data.eval_results[0].metric_value,
                  "text": card.text, "grid": grid, "class": type(pipe).__name__, "shape": list(images.shape)}))
"""
        fresh = hub.client_env(tmp_path / "fresh_home")  # an empty cache: everything comes over HTTP
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=fresh, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert got["name"] == "digits-tiny" and got["bits"] == round(metrics["bits_per_dim"], 3)
    assert 'from_pretrained("ns/digits-tiny", trust_remote_code=True)' in got["text"]
    assert got["class"] == "DDPMHFPipeline" and got["shape"] == [2, 8, 8, 1]
    with Image.open(got["grid"]) as grid, Image.open(out / "samples" / "grid.png") as local:
        assert np.array_equal(np.asarray(grid), np.asarray(local))


@pytest.mark.parametrize("card", ["ddpm-digits-8", "ddpm-mnist-28"])
def test_example_card_is_what_the_code_renders(card):
    """model_cards/ holds the cards of `make demo` and of the mnist recipe (with the runs' records, without weights):
    each must be what the current code renders from those records, so the examples never drift from the code."""
    run = os.path.join(ROOT, "model_cards", card)
    with open(os.path.join(run, "README.md")) as f:
        stored = f.read()
    assert card_text(run) == stored
    for link in _linked_images(stored):
        assert os.path.isfile(os.path.join(run, link)), link


@pytest.mark.slow
def test_card_and_evaluate_keep_a_hand_edited_card(run_copy, capsys):
    """Found as a user: `ddpm-hf card` and `ddpm-hf evaluate --update_model_card` rendered README.md again, and a
    hand-edited card was gone. A card ddpm-hf wrote ends with the hash of its text; once the text changes, both
    commands refuse (exit 2, naming --replace_edited_card, nothing written: card, pictures, metrics.json, no
    evaluation) and --replace_edited_card (or its alias --force) replaces it. A card without the stamp (an older
    ddpm-hf's) counts as edited unless it is one ddpm-hf renders for the run."""
    from ddpm_hf.run_dir import MODEL_CARD

    run, card = run_copy, run_copy / MODEL_CARD
    assert not edited_by_hand(run)  # as training wrote it: `card` renders it again
    code, out, err = cli_in_process(capsys, "card", run, "--hub_model_id", "ns/other")
    assert code == 0 and f"wrote {card}" in out, err
    assert 'from_pretrained("ns/other"' in card.read_text() and not edited_by_hand(run)

    card.write_text(card.read_text().replace("## ", "## Trained on a Tuesday\n\n## ", 1))
    assert edited_by_hand(run)
    watched = [card, run / "metrics.json", *sorted((run / "images").iterdir())]
    before = [p.read_bytes() for p in watched]
    evaluate = ["evaluate", run, "--metrics", "bpd", "--bpd_timesteps", "2", "--max_eval_images", "4",
                "--batch_size", "4", "--name", "edit", "--update_model_card"]
    for argv in (["card", run], ["card", run, "--hub_model_id", TINY_RUN_REPO], evaluate):
        code, _, err = cli_in_process(capsys, *argv)
        last = err.strip().splitlines()[-1]
        assert code == 2 and "was edited by hand since ddpm-hf wrote it" in last, err
        assert "--replace_edited_card" in last, err
        assert "Traceback" not in err and [p.read_bytes() for p in watched] == before
    assert not (run / "eval-edit.json").exists()  # refused before the evaluation, not after it

    code, _, err = cli_in_process(capsys, *evaluate, "--replace_edited_card")
    assert code == 0, err[-2000:]
    text = card.read_text()
    assert "Trained on a Tuesday" not in text and not edited_by_hand(run)
    assert json.loads((run / "metrics.json").read_text())["bits_per_dim_estimate"]["num_images"] == 4
    card.write_text(text + "\nA note.\n")
    code, _, err = cli_in_process(capsys, "card", run, "--force")
    assert code == 0 and "A note." not in card.read_text(), err

    # a card without the stamp: ddpm-hf's own text is not an edit, any change is
    card.write_text(str(model_card(run)))
    assert not edited_by_hand(run)
    card.write_text(str(model_card(run)).replace("## ", "## By hand\n\n## ", 1))
    assert edited_by_hand(run)
    code, _, err = cli_in_process(capsys, "card", run)
    assert code == 2 and "was edited by hand" in err


@pytest.mark.slow
def test_push_needs_a_login_at_start(tmp_path):
    env = {k: v for k, v in train_env().items() if not k.startswith(("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))}
    env["HF_HOME"] = str(tmp_path / "no_login")  # no stored token there
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--push_to_hub", "--hub_model_id",
                        "ns/x", "--output_dir", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "needs a Hub login" in r.stderr
    assert not (tmp_path / "run").exists()  # nothing trained


@pytest.mark.slow
def test_failed_upload_loses_nothing(tmp_path):
    """The Hub is unreachable when training ends: the run fails saying where the pipeline is and how to upload it;
    `ddpm-hf push` then uploads it, card included, once the Hub answers."""
    from hub_server import HubServer

    out = tmp_path / "run"
    with HubServer(tmp_path / "hub") as hub:
        env = hub.client_env(tmp_path / "hf_home")
        env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        unreachable = dict(env, HF_ENDPOINT="http://127.0.0.1:9")  # the discard port: connection refused
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), *TINY, "--output_dir",
                            str(out), "--max_train_steps", "2", "--checkpointing_steps", "100", "--push_to_hub",
                            "--hub_model_id", "ns/later", "--hub_revision", "dev", "--hub_private_repo"],
                           cwd=tmp_path, env=unreachable, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "the upload to ns/later (branch dev) failed" in r.stderr
        assert "Traceback" not in r.stderr
        assert f"ddpm-hf push {out} --hub_model_id ns/later --hub_revision dev --hub_private_repo" in r.stderr
        assert (out / "README.md").is_file() and (out / "metrics.json").is_file()
        assert not hub.repo_exists("ns/later")
        r = cli_subprocess("push", str(out), "--hub_model_id", "ns/later", "--hub_revision", "dev",
                           "--hub_private_repo", env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert hub.repo_exists("ns/later") and hub.repo_private("ns/later")
        r = cli_subprocess("push", str(out), "--hub_model_id", "ns/later", env=env)  # and main, for the checks below
        assert r.returncode == 0, r.stderr[-3000:]
        stored = Path(hub.repo_dir("ns/later"))
    assert ModelCard.load(out / "README.md").data.model_name == "later"
    assert (stored / "README.md").read_bytes() == (out / "README.md").read_bytes()
    assert (stored / "images" / "samples.png").read_bytes() == (out / "samples" / "grid.png").read_bytes()


def _scored(sampler, steps, value, num_samples=1000):
    """An evaluation report as ``ddpm_hf.evaluation.report.evaluate`` returns it: one digits score of one sampler."""
    score = {"value": value, "features": "the digits CNN", "reference": "all 1797 digits", "digits_fd_floor": 1.39,
             "digits_fd_floor_std": 0.07}
    return {"name": f"{sampler}-{steps}", "seed": 0, "reference_split": "all", "scheduler": sampler,
            "sampling": [{"num_samples": num_samples, "num_inference_steps": steps, "scores": {"digits_fd": score}}]}


@pytest.mark.slow
def test_card_names_each_sampler_and_recommends_the_fewest_calls_near_the_best(run_copy):
    """Scores of several samplers merged into metrics.json (as `ddpm-hf evaluate --scheduler NAME
    --update_model_card` merges them) stay apart by sampler, and the card recommends the sampler with the fewest UNet
    calls within 10% of the best score, with the diffusers line that swaps it in, and shows them against UNet calls
    in a picture."""
    from ddpm_hf.evaluation.merge import merge_into_metrics

    for report in (_scored("DDPMHFScheduler", 100, 1.50), _scored("DDPMHFScheduler", 10, 3.0),
                   _scored("unipc", 10, 1.70), _scored("dpmsolver++", 20, 1.70), _scored("heun", 6, 1.55),
                   _scored("ddim", 5, 1.51, num_samples=100),  # fewer samples: not compared with the others
                   _scored("unipc", 10, 1.62)):  # measured again: replaces the first unipc score
        assert merge_into_metrics(str(run_copy), report)
    entries = json.loads((run_copy / "metrics.json").read_text())["sample_metrics"]
    assert sorted((e["sampler"], e["num_inference_steps"], e["value"]) for e in entries) == [
        ("ddim", 5, 1.51), ("ddpm", 10, 3.0), ("ddpm", 100, 1.5), ("dpmsolver++", 20, 1.7), ("heun", 6, 1.55),
        ("unipc", 10, 1.62)]
    text = card_text(str(run_copy))
    assert "1,000 samples, 10 steps of unipc, seed 0" in text and "1,000 samples, 100 steps, seed 0" in text
    # heun's 6 steps cost 11 UNet calls: unipc's 10 calls win among the scores within 10% of 1.50
    assert ("**Recommended sampling**: 10 steps of unipc (10 UNet calls per image), the fewest UNet calls among the "
            "samplers measured above within 10% of the best digits classifier Frechet distance: 1.62 against 1.5 "
            "(100 steps).") in text
    assert "`pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)`" in text
    assert "--scheduler unipc --num_inference_steps 10" in text
    # "How to use" samples with the recommended sampler, and its code runs as printed on this run's folder
    usage = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "from diffusers import DiffusionPipeline, UniPCMultistepScheduler" in usage
    assert "pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)" in usage
    assert "pipe(batch_size=16, num_inference_steps=10)" in usage
    namespace = {}
    exec(usage.replace("path/to/this/folder", run_copy.as_posix()).replace("batch_size=16", "batch_size=2")  # noqa: S102
         .replace('images[0].save("sample.png")', ""), namespace)
    assert len(namespace["images"]) == 2
    assert type(namespace["pipe"].scheduler).__name__ == "UniPCMultistepScheduler"
    assert "sampler_quality.png" not in text  # not drawn yet: write_model_card draws it

    # `ddpm-hf card` draws the comparable scores (1,000 samples) against UNet calls, and the card shows the picture
    from ddpm_hf.model_card import write_model_card
    from ddpm_hf.model_card_sampling import SAMPLER_PLOT, plot_sampler_scores

    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert plot_sampler_scores(metrics, str(run_copy / "drawn.png")) == {
        "ddpm": [(10, 3.0), (100, 1.5)], "dpmsolver++": [(20, 1.7)], "heun": [(11, 1.55)], "unipc": [(10, 1.62)]}
    write_model_card(str(run_copy))
    text = (run_copy / "README.md").read_text()
    assert f"![sample quality against UNet calls per image]({SAMPLER_PLOT})" in text
    with Image.open(run_copy / SAMPLER_PLOT) as picture:
        assert picture.format == "PNG" and picture.width >= 600
    # with fewer than two comparable scores there is no picture, and an old one is removed with its link
    metrics["sample_metrics"] = [e for e in metrics["sample_metrics"] if e["sampler"] in ("ddim", "unipc")]
    (run_copy / "metrics.json").write_text(json.dumps(metrics))
    assert plot_sampler_scores(metrics, str(run_copy / "none.png")) is None and not (run_copy / "none.png").exists()
    write_model_card(str(run_copy))
    assert not (run_copy / SAMPLER_PLOT).exists() and "sampler_quality" not in (run_copy / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["digits", "mnist"])
def test_card_states_the_default_guidance_and_its_measured_numbers(run_copy, metric):
    """A guidance sweep (``ddpm-hf evaluate --metrics guidance``) merged into metrics.json puts its table in the card,
    the pipeline's default scale in bold with its measured accuracy and FD, named after the sweep's metric."""
    from ddpm_hf.evaluation.conditional import summarize
    from ddpm_hf.evaluation.merge import merge_into_metrics
    from ddpm_hf.pipeline_ddpm_hf_denoiser import DEFAULT_GUIDANCE_SCALE

    scales = sorted({0.0, 1.0, DEFAULT_GUIDANCE_SCALE, 5.0})
    rows = [{"guidance_scale": s, "metric": metric, "seed": 0, "num_samples": 1000, "accuracy": 0.1 + 0.1 * s,
             f"{metric}_fd": 2.0 + s, f"{metric}_fd_floor": 1.39, f"{metric}_fd_floor_std": 0.07} for s in scales]
    report = {"name": "sweep", "seed": 0, "reference_split": "all", "scheduler": "unipc",
              "guidance": {"metric": metric, "summary": summarize(rows), "num_inference_steps": 10,
                           "default_guidance_scale": DEFAULT_GUIDANCE_SCALE}}
    assert merge_into_metrics(str(run_copy), report)
    text = card_text(str(run_copy))
    d = DEFAULT_GUIDANCE_SCALE
    assert (f"the pipeline's default `guidance_scale` is {d:g} (diffusers' convention: 1 = the conditional model "
            f"alone, 0 = the unconditional one); at the default, {0.1 + 0.1 * d:.1%} of the samples are recognised "
            f"as the requested class and the {metric} FD is {2.0 + d:.3f}") in text
    assert f"| guidance scale | class accuracy | {metric} FD |" in text
    assert f"accuracy = the {metric} classifier agrees with the requested label" in text
    assert "1,000 samples per scale, one class after another, 10 steps of unipc, seed 0" in text
    assert f"| **{d:g} (default)** | {0.1 + 0.1 * d:.1%} | {2.0 + d:.3f} (real digits: 1.39) |" in text
    assert "| 5 | 60.0% | 7.000 (real digits: 1.39) |" in text

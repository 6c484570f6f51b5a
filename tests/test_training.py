"""Training as a user runs it: real processes (python, torchrun), real files; tiny runs of seconds each."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpm_hf import DDPMHFPipeline
from ddpm_hf.data import load_digits_dataset, to_mode
from ddpm_hf.data import EpochBatches, StreamBatches
from ddpm_hf.training.flat_parameters import flatten_parameters
from ddpm_hf.training import micro_batches
from ddpm_hf.unet_configs import unet_config

from helpers import (TINY, TINY_RUN_TOKEN, TRAIN, abort_with_stacks, kill_after_checkpoint, launch_lock, png_folder,
                     read_history, read_weights, run_train, run_trains, train_env, without_progress_bars)


def _held_out_bpd(folder, num_images, ranks=1):
    """The held-out bits/dim of a saved run recomputed here, independently of the training code's evaluation: the
    saved pipeline's UNet and scheduler, the first ``num_images`` digits of the test split, ``ddpm_hf.likelihood``'s
    full T-term bound (Ho eq. 5) with the noise the run used (rank r scores images r, r + ranks, ... with seed r)."""
    from ddpm_hf.data import cache_images, to_model_range
    from ddpm_hf.likelihood import bits_per_dim

    pipe = DDPMHFPipeline.from_pretrained(folder)
    test = load_digits_dataset()["test"].select(range(num_images))
    images = cache_images(test, "image", 8, 1, progress=False)
    with torch.no_grad():
        totals = [bits_per_dim(pipe.unet.eval(), pipe.scheduler, to_model_range(images[r::ranks]),
                               generator=torch.Generator().manual_seed(r), progress=False).total
                  for r in range(ranks)]
    return torch.cat(totals).mean().item()


def test_digits_default_dataset():
    data = load_digits_dataset()
    assert len(data["train"]) == 1617 and len(data["test"]) == 180
    assert data["train"][0]["image"].mode == "L" and data["train"][0]["image"].size == (8, 8)
    assert sorted(np.bincount(data["test"]["label"]).tolist()) == [18] * 10
    pixels = np.stack([np.asarray(im) for im in data["train"][:50]["image"]])
    assert pixels.max() == 255 and pixels.min() == 0


def test_image_modes_convert():
    from PIL import Image

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent: white after compositing
    assert np.asarray(to_mode(rgba, 3)).tolist()[0][0] == [255, 255, 255]
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    assert np.asarray(to_mode(palette, 3))[0, 0].tolist() == [10, 20, 30]
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(to_mode(sixteen, 1)).max() == 255


def test_batches_are_sharded_and_reproducible():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    ranks = [EpochBatches(images, 10, seed=3, rank=r, world=2) for r in range(2)]
    assert ranks[0].per_epoch == 5
    seen = [torch.cat([b.batch(k) for k in range(5)]).flatten().tolist() for b in ranks]
    assert set(seen[0]).isdisjoint(seen[1]) and len(set(seen[0]) | set(seen[1])) == 100  # one epoch, no repeats
    assert torch.equal(EpochBatches(images, 10, seed=3, rank=1, world=2).batch(7), ranks[1].batch(7))
    assert not torch.equal(ranks[0].batch(0), ranks[0].batch(5))  # a new permutation each epoch


@pytest.mark.slow  # optimizer steps of two cpu-8 UNets
def test_flat_parameters_train_like_separate_ones():
    """flatten_parameters: gradients land in the flat buffer, and AdamW + clipping over it match the same steps over
    the module's separate tensors."""
    from diffusers import UNet2DModel

    from ddpm_hf.unet_configs import unet_config

    torch.manual_seed(0)
    separate = UNet2DModel(**unet_config("cpu-8"))
    flattened = UNet2DModel(**unet_config("cpu-8"))
    flattened.load_state_dict(separate.state_dict())
    flat = flatten_parameters(flattened)
    assert flat.numel() == sum(p.numel() for p in separate.parameters())
    opt_a = torch.optim.AdamW(separate.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    opt_b = torch.optim.AdamW([flat], lr=1e-3, weight_decay=0.01, fused=True)
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,))
    for _ in range(3):
        for model in (separate, flattened):
            (model(x, t).sample - x).square().mean().backward()
        grads = torch.cat([p.grad.flatten() for p in separate.parameters()])
        torch.testing.assert_close(flat.grad, grads, rtol=1e-4, atol=1e-6)
        norm_a = torch.nn.utils.clip_grad_norm_(separate.parameters(), 0.1)
        norm_b = torch.nn.utils.clip_grad_norm_([flat], 0.1)
        torch.testing.assert_close(norm_a, norm_b, rtol=1e-4, atol=0)
        opt_a.step(), opt_b.step()
        opt_a.zero_grad(), flat.grad.zero_()
    for a, b in zip(separate.parameters(), flattened.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=3e-5)  # Adam moves each weight by ~1e-3 a step
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in flattened.parameters())


@pytest.mark.slow
def test_tiny_run_writes_every_output(trained_run):
    """The session's tiny run (helpers.TINY_RUN: 6 steps, checkpoints every 2, TensorBoard, a --hub_token)."""
    out = trained_run
    names = set(os.listdir(out))
    assert {"model_index.json", "unet", "scheduler", "pipeline_ddpm_hf.py", "README.md", "images", "samples", "loss.png",
            "training_args.json", "metrics.json", "history.jsonl"} <= names
    assert sorted(n for n in names if n.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]
    assert {"grid.png", "strip.png", "sample_0000.png"} <= set(os.listdir(out / "samples"))
    for name in os.listdir(out):
        if name.endswith(".json"):
            assert TINY_RUN_TOKEN not in (out / name).read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["images_seen"] == 6 * 16
    assert metrics["num_images"] == 16  # the bound of the saved (EMA) weights on the held-out images, recomputed
    assert metrics["bits_per_dim"] == pytest.approx(_held_out_bpd(out, 16), rel=1e-6)
    history = read_history(out)
    assert [h["step"] for h in history] == list(range(1, 7)) and all(np.isfinite(h["loss"]) for h in history)
    seconds = [h["seconds"] for h in history]  # wall time since the start, for loss-against-time plots
    assert seconds == sorted(seconds) and 0 < seconds[-1] <= metrics["train_seconds"] + 0.01
    pipe = DDPMHFPipeline.from_pretrained(out)
    assert pipe.scheduler.config.num_train_timesteps == 20 and pipe.unet.config.in_channels == 1
    # the run's folder is the pipeline, as train_unconditional.py leaves it: diffusers' own loader takes it
    from diffusers import DiffusionPipeline, UNet2DModel

    remote = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(remote).__name__ == "DDPMHFPipeline"
    saved = read_weights(out)
    assert all(torch.equal(v, remote.unet.state_dict()[k]) for k, v in saved.items())
    # checkpoints a diffusers user opens with UNet2DModel: the training weights and the EMA with its state
    for sub in ("unet", "unet_ema"):
        assert (out / "checkpoint-4" / sub / "diffusion_pytorch_model.safetensors").is_file()
    ema = UNet2DModel.from_pretrained(out / "checkpoint-4", subfolder="unet_ema")
    raw = UNet2DModel.from_pretrained(out / "checkpoint-4", subfolder="unet")
    assert ema.config["optimization_step"] == 4 and ema.config["use_ema_warmup"] is True
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), raw.parameters()))  # EMA != raw weights
    assert not any(name.endswith((".bin", ".pkl")) and "model" in name for name in os.listdir(out / "checkpoint-4"))
    args = json.loads((out / "training_args.json").read_text())
    assert args["recipe"] == "digits" and args["unet_preset"] == "cpu-8" and args["resolution"] == 8
    assert args["recipe_overrides"] == ["ddpm_num_inference_steps", "ddpm_num_steps", "lr_warmup_steps",
                                        "max_train_steps", "num_sample_images", "train_batch_size", "unet_preset"]
    # tensorboard: the scalars of every step, the held-out bits/dim and the sample grid and strip as images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs" / "ddpm-hf"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss", "lr", "grad_norm", "eval/bits_per_dim"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 7))
    assert {"samples/grid", "samples/strip"} <= set(tags["images"])
    grid = events.Images("samples/grid")[-1]
    assert grid.step == 6 and grid.width >= 8 * 8 and grid.height >= 8 * 8  # upscaled, not 8x8 thumbnails


def _bpd_of_unet(unet, scheduler, num_images=16):
    """Held-out bits/dim of ``unet`` (the full T-term bound, ``ddpm_hf.likelihood``) on the first test digits."""
    from ddpm_hf.data import cache_images, to_model_range
    from ddpm_hf.likelihood import bits_per_dim

    images = cache_images(load_digits_dataset()["test"].select(range(num_images)), "image", 8, 1, progress=False)
    with torch.no_grad():
        return bits_per_dim(unet.eval(), scheduler, to_model_range(images), generator=torch.Generator().manual_seed(0),
                            progress=False).total.mean().item()


@pytest.mark.slow
def test_training_learns(tmp_path):
    """80 steps of the tiny run lower the training loss and the held-out bound by stated margins against the
    network after its first step (checkpoint-1): the loss of the last 10 steps is under half that of the first 5,
    and the bound falls by more than 0.5 bits/dim (measured: by 1.0). Gradient ascent (a flipped sign) or an optimizer
    that never sees the gradient fails both."""
    from diffusers import UNet2DModel

    out = tmp_path / "learns"
    run_train("--output_dir", str(out), "--max_train_steps", "80", "--checkpointing_steps", "1",
              "--checkpoints_total_limit", "100", "--lr_warmup_steps", "5", "--eval_max_images", "16", cwd=tmp_path)
    losses = [h["loss"] for h in read_history(out)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses
    scheduler = DDPMHFPipeline.from_pretrained(out).scheduler
    start, end = (_bpd_of_unet(UNet2DModel.from_pretrained(out / f"checkpoint-{k}", subfolder="unet"), scheduler)
                  for k in (1, 79))  # the trained weights themselves (the pipeline holds their slower EMA)
    assert end < start - 0.5, (start, end)  # measured: 6.27 -> 5.27


@pytest.mark.slow
def test_gradient_accumulation_averages_the_micro_batches(tmp_path):
    """Accumulating 2 micro-batches of 8 is one step on their 16 images: its gradient is the mean of the two, with
    the norm of a batch-16 step's (history's grad_norm, taken before clipping; clipping far above it). Summing the
    micro-batches' gradients instead doubles it. Mean over 12 steps of each run (different noise, same images)."""
    common = ["--max_train_steps", "12", "--max_grad_norm", "1e9", "--eval_split", "", "--lr_warmup_steps", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_trains(["--output_dir", str(one), *common], ["--output_dir", str(two), *common, "--train_batch_size", "8",
                                                      "--gradient_accumulation_steps", "2"], cwd=tmp_path)
    norm_one = np.mean([h["grad_norm"] for h in read_history(one)])
    norm_two = np.mean([h["grad_norm"] for h in read_history(two)])
    assert 0.75 < norm_two / norm_one < 1.33, (norm_one, norm_two)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["cached", "streamed"])
def test_resume_is_bit_identical(tmp_path, data):
    """A run killed after its step-4 checkpoint and resumed to step 8 ends with the same weights (EMA included)
    as an uninterrupted 8-step run: on the cached digits, and streamed from an image folder with random crops
    and flips (12x10 images cropped to 8x8 after resizing, so every crop position is drawn)."""
    common = ["--max_train_steps", "8", "--checkpointing_steps", "4", "--eval_max_images", "1",
              "--num_sample_images", "1"]
    if data == "streamed":
        images = png_folder(tmp_path / "images", n=20, size=(12, 10), mode="RGB")
        common += ["--train_data_dir", str(images), "--streaming", "--resolution", "8", "--random_flip",
                   "--train_batch_size", "4"]
    run_train("--output_dir", str(tmp_path / "straight"), *common, cwd=tmp_path)

    stopped = tmp_path / "stopped"
    kill_after_checkpoint(["--output_dir", str(stopped), *common], stopped, tmp_path)
    r = run_train("--output_dir", str(stopped), *common, "--resume_from_checkpoint", "latest", cwd=tmp_path)
    assert "resumed from" in r.stdout + r.stderr

    a, b = read_weights(tmp_path / "straight"), read_weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [h["loss"] for h in read_history(tmp_path / "straight")]
    lb = [h["loss"] for h in read_history(stopped)]
    assert la == lb
    if data == "streamed":  # 20 images in batches of 4: the stream's second pass starts at step 6
        assert [h["epoch"] for h in read_history(stopped)] == [1] * 5 + [2] * 3


def test_resuming_earlier_prunes_the_abandoned_later_checkpoints(tmp_path):
    """A run resumed from checkpoint-2 after an abandoned run left checkpoint-6 and -8: publishing checkpoint-4
    deletes the later ones (else `latest` would pick the abandoned run's) and keeps the newest --checkpoints_total_limit
    among the rest, never the one just written. Real accelerate save_state on one process."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ddpm_hf.run_dir import checkpoint_dirs, read_training_state, resolve_checkpoint
    from ddpm_hf.training.checkpoints import save_checkpoint

    for n in (1, 2, 6, 8):
        (tmp_path / f"checkpoint-{n}").mkdir()
    accelerator = Accelerator(cpu=True)
    try:
        save_checkpoint(accelerator, str(tmp_path), 4, {"step": 4}, total_limit=2)
        assert checkpoint_dirs(str(tmp_path)) == ["checkpoint-2", "checkpoint-4"]
        assert read_training_state(resolve_checkpoint("latest", str(tmp_path))) == {"step": 4}
        save_checkpoint(accelerator, str(tmp_path), 5, {"step": 5}, total_limit=1)
        assert checkpoint_dirs(str(tmp_path)) == ["checkpoint-5"] and not list(tmp_path.glob("*.tmp"))
    finally:
        AcceleratorState._reset_state(True)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_NODES_TIMEOUT = 180


class TwoNodesHang(AssertionError):
    """Two simulated nodes did not finish in TWO_NODES_TIMEOUT s (the message has both nodes' output and stacks)."""


def _two_nodes(*args, cwd):
    """The same run as two one-process torchrun "nodes" (node ranks 0 and 1) meeting on 127.0.0.1, as two machines
    would; returns both nodes' (stdout, stderr), written to files (a pipe read one node at a time could fill and block
    the other). If they do not finish in time, every Python process of both nodes (agents and workers) prints its
    threads' stacks (faulthandler, on SIGABRT) before it is killed: where a hang sat is in the failure message."""
    with launch_lock():
        port = _free_port()
        procs, files = [], []
        for node_rank in (0, 1):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                   TRAIN, *TINY, *args]
            out, err = (open(cwd / f"node{node_rank}.{name}", "w+", newline="") for name in ("out", "err"))
            files.append((out, err))
            procs.append(subprocess.Popen(cmd, cwd=cwd, env=dict(train_env(), PYTHONFAULTHANDLER="1"), stdout=out,
                                          stderr=err, text=True, start_new_session=True))
        deadline, timed_out = time.time() + TWO_NODES_TIMEOUT, False
        try:
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:  # both nodes' agents and workers
            timed_out = True
            abort_with_stacks([p.pid for p in procs if p.poll() is None])
            for p in procs:
                p.wait()
        results = []
        for out, err in files:
            out.seek(0), err.seek(0)
            results.append((out.read(), err.read()))
            out.close(), err.close()
    if timed_out:
        text = "\n".join(f"--- node {i}:\n{out[-2000:]}\n{without_progress_bars(err)[-6000:]}"
                         for i, (out, err) in enumerate(results))
        raise TwoNodesHang(f"two nodes timed out after {TWO_NODES_TIMEOUT} s\n{text}")
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    return results


def _resume_on_two_nodes(run, nodes, *args, cwd):
    """A copy of ``run`` at ``nodes`` (its final weights and metrics removed) resumed on two simulated nodes with
    ARGS. No retry: the pair used to sit past 300 s after training in about one full-suite run in five, a launched
    worker blocked in its teardown (lifecycle.exit_launched_worker now ends it); 23 runs of this test in a row beside
    two busy jobs finished in 45-55 s each. A hang fails with both nodes' stacks (``_two_nodes``)."""
    shutil.rmtree(nodes, ignore_errors=True)
    shutil.copytree(run, nodes)
    for name in ("unet", "metrics.json"):
        shutil.rmtree(nodes / name) if (nodes / name).is_dir() else (nodes / name).unlink()
    return _two_nodes("--output_dir", str(nodes), *args, cwd=cwd)


@pytest.mark.slow
def test_two_processes_one_node_two_nodes_and_one_process(tmp_path):
    """torchrun with 2 processes on one node, its resume from a checkpoint name on two simulated nodes, and the
    learning rate of every step for 1 and 2 processes and 1 and 2 accumulation steps."""
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    common = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--eval_max_images", "15"]
    run_train("--output_dir", str(out), *common, "--eval_steps", "2", cwd=tmp_path, launcher=launcher)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["images_seen"] == 4 * 16 * 2
    assert metrics["process_group_timeout_seconds"] == 7200  # --ddp_timeout reached the live process group
    # held-out bits/dim split across the ranks (8 + 7 images) and gathered: every image counted once
    assert metrics["num_images"] == 15
    assert metrics["bits_per_dim"] == pytest.approx(_held_out_bpd(out, 15, ranks=2), rel=1e-6)
    assert metrics["weights_identical_across_ranks"] is True
    assert metrics["first_batches_distinct_across_ranks"] is True
    # the ranks' all-reduced gradient reaches the optimizer: DDP on CPU re-allocates the parameters, and a run whose
    # flat buffer lost them stepped on a zero gradient (grad_norm 0.0, weights moved only by weight decay)
    assert all(h["grad_norm"] > 0.1 for h in read_history(out))
    early = load_file(out / "checkpoint-2" / "unet" / "diffusion_pytorch_model.safetensors")
    final = read_weights(out)
    # step 3 (lr 5e-4) moved the weights by about the learning rate; a zero gradient moves them by lr x weight decay
    assert max((final[k] - early[k]).abs().max().item() for k in final) > 1e-4
    assert sorted(os.listdir(out / "samples")).count("grid.png") == 1
    DDPMHFPipeline.from_pretrained(out)
    assert os.listdir(out / "checkpoint-2").count("random_states_1.pkl") == 1  # rank 1's part is in the checkpoint

    # two machines (one process each) resuming that run from its checkpoint-2, named as diffusers' script names it
    # (each rank restores its own random state): the same steps 3 and 4, weights and losses, as one machine with two
    # processes. (Two nodes from step 1 are the same case without the resume; started as one more pair of fresh
    # launchers, it cost about 25 s of the suite.)
    nodes = tmp_path / "nodes"
    _resume_on_two_nodes(out, nodes, *common, "--resume_from_checkpoint", "checkpoint-2", cwd=tmp_path)
    a, c = read_weights(out), read_weights(nodes)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert [h["step"] for h in read_history(nodes)] == [1, 2, 3, 4]
    assert [h["loss"] for h in read_history(nodes)] == [h["loss"] for h in read_history(out)]
    assert json.loads((nodes / "metrics.json").read_text())["processes"] == 2

    # the LR of optimizer step s does not depend on the number of processes or on gradient accumulation
    lrs = [h["lr"] for h in read_history(out)]
    for extra in ([], ["--gradient_accumulation_steps", "2", "--train_batch_size", "8"]):
        one = tmp_path / f"one{len(extra)}"
        run_train("--output_dir", str(one), *common, "--eval_split", "", *extra, cwd=tmp_path)
        assert [h["lr"] for h in read_history(one)] == lrs
    # and it is diffusers' warm-up + cosine over 4 steps (logged after each step, as train_unconditional.py logs it)
    np.testing.assert_allclose(lrs, [1e-3 * 1 / 2, 1e-3, 1e-3 * (1 + np.cos(np.pi / 2)) / 2, 0.0], atol=1e-12)


@pytest.mark.slow
def test_image_folder_rgb_resized(tmp_path):
    images = png_folder(tmp_path / "images", mode="P")  # palette PNGs become RGB
    out = tmp_path / "run"
    run_train("--train_data_dir", str(images), "--resolution", "8", "--random_flip", "--output_dir", str(out),
           "--max_train_steps", "2", "--train_batch_size", "4", "--checkpointing_steps", "100", cwd=tmp_path)
    pipe = DDPMHFPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == 3 and pipe.unet.config.sample_size == 8
    assert "bits_per_dim" not in json.loads((out / "metrics.json").read_text())  # no held-out split there


@pytest.mark.slow
def test_streaming_with_bf16(tmp_path):
    """--mixed_precision bf16 reaches the forward pass: the first step's loss (same initial weights, batch and draws)
    differs from the float32 run's by bf16 rounding (about 2^-8 relative), not more."""
    out = tmp_path / "run"
    common = ["--streaming", "--checkpointing_steps", "100", "--eval_split", "", "--num_sample_images", "1"]
    run_trains([*common, "--mixed_precision", "bf16", "--output_dir", str(out), "--max_train_steps", "3"],
               [*common, "--output_dir", str(tmp_path / "fp32"), "--max_train_steps", "1"], cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["images_seen"] == 48
    args = json.loads((out / "training_args.json").read_text())
    assert args["streaming"] is True and args["mixed_precision"] == "bf16"
    bf16, fp32 = read_history(out)[0]["loss"], read_history(tmp_path / "fp32")[0]["loss"]
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.05)


@pytest.mark.slow
def test_hub_dataset_over_loopback(tmp_path):
    """--dataset_name ns/name goes through datasets.load_dataset to HF_ENDPOINT (a loopback Hub server)."""
    from hub_server import HubServer

    repo = png_folder(tmp_path / "repo" / "train", n=8, size=(8, 8), mode="L").parent
    with HubServer(tmp_path / "hub") as hub:
        hub.seed_repo("someone/tiny-digits", repo, repo_type="dataset")
        env = hub.client_env(tmp_path / "hf_home")
        env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        code = ("import sys, datasets; datasets.config.USE_PARQUET_EXPORT = False\n"
                "from ddpm_hf.cli.train import main; main(sys.argv[1:])")
        out = tmp_path / "run"
        r = subprocess.run([sys.executable, "-c", code, *TINY, "--dataset_name", "someone/tiny-digits",
                            "--output_dir", str(out), "--max_train_steps", "2", "--train_batch_size", "4",
                            "--checkpointing_steps", "100"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert any("/datasets/someone/tiny-digits" in path for _, path in hub.requests)
    pipe = DDPMHFPipeline.from_pretrained(out)
    # any data but the digits gets the diffusers recipe: train_unconditional.py's resolution 64
    assert pipe.unet.config.in_channels == 1 and pipe.unet.config.sample_size == 64
    assert json.loads((out / "training_args.json").read_text())["recipe"] == "diffusers"
    from huggingface_hub import ModelCard  # the card links the Hub dataset in its metadata and text

    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == ["someone/tiny-digits"]
    assert "[someone/tiny-digits](https://huggingface.co/datasets/someone/tiny-digits)" in card.text


@pytest.mark.slow
def test_learned_range_hybrid_loss_with_v_prediction_and_min_snr(tmp_path):
    """L_hybrid with v-prediction and --snr_gamma 5: against the same first step without --snr_gamma (same weights,
    batch and draws), the unweighted v-MSE by timestep quartile and the L_vlb estimate are equal, and the loss is
    smaller by the min-SNR weights min(SNR, 5) / (SNR + 1) < 1 (Hang et al. ICCV 2023); the saved run's held-out
    bits/dim is the bound recomputed from its weights."""
    out = tmp_path / "run"
    common = ["--variance_type", "learned_range", "--prediction_type", "v_prediction", "--checkpointing_steps", "100"]
    run_trains([*common, "--snr_gamma", "5", "--output_dir", str(out), "--max_train_steps", "3"],
               [*common, "--output_dir", str(tmp_path / "plain"), "--max_train_steps", "1", "--eval_split", ""],
               cwd=tmp_path)
    history = read_history(out)
    assert all("vlb_bpd" in h and np.isfinite(h["vlb_bpd"]) for h in history)
    pipe = DDPMHFPipeline.from_pretrained(out)
    assert pipe.unet.config.out_channels == 2 and pipe.scheduler.config.variance_type == "learned_range"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bits_per_dim"] == pytest.approx(_held_out_bpd(out, 16), rel=1e-6)

    weighted, plain = history[0], read_history(tmp_path / "plain")[0]
    quartiles = [k for k in plain if k.startswith("loss_t_q")]
    assert quartiles and all(weighted[k] == pytest.approx(plain[k], rel=1e-6) for k in quartiles)
    assert weighted["vlb_bpd"] == pytest.approx(plain["vlb_bpd"], rel=1e-6)
    mse_weighted = weighted["loss"] - 0.001 * weighted["vlb_bpd"]
    mse_plain = plain["loss"] - 0.001 * plain["vlb_bpd"]
    assert 0 < mse_weighted < 0.95 * mse_plain


# aot_eager in `make test`: TorchDynamo's capture of the UNet and AOTAutograd's joint graph, through accelerate's
# wrapper, without code generation. inductor (the C++ code generation on top) is marked `compile` and runs in
# `make test-compile`: its cold compile took 540 s of the suite's 2,573 s on 2 busy cores (2026-12-02).
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.compile)])
def test_dynamo_backend_trains_like_eager(tmp_path, backend):
    """--dynamo_backend aot_eager / inductor (accelerate compiles the UNet): the same losses as eager to float
    tolerance, and the saved pipeline is a plain UNet2DModel (the compiled wrapper is not saved)."""
    # a small UNet (one level, one res block, attention) keeps the cold compile short
    config = tmp_path / "unet.json"
    config.write_text(json.dumps(unet_config("cpu-8", channels=1, block_out_channels=(32,), layers_per_block=1,
                                             down_block_types=("AttnDownBlock2D",),
                                             up_block_types=("AttnUpBlock2D",))))
    common = ["--max_train_steps", "2", "--checkpointing_steps", "100", "--eval_max_images", "4",
              "--num_sample_images", "1", "--train_batch_size", "4", "--model_config_name_or_path", str(config)]
    run_trains(["--output_dir", str(tmp_path / "eager"), *common],
               ["--output_dir", str(tmp_path / "compiled"), *common, "--dynamo_backend", backend], cwd=tmp_path)
    eager, compiled = read_history(tmp_path / "eager"), read_history(tmp_path / "compiled")
    np.testing.assert_allclose([h["loss"] for h in compiled], [h["loss"] for h in eager], rtol=1e-3)
    a, b = read_weights(tmp_path / "eager"), read_weights(tmp_path / "compiled")
    assert a.keys() == b.keys()
    # Adam moves a weight by at most about lr (1e-3) a step whatever the gradient's size, so rounding differences in
    # tiny gradients can move weights apart by up to 2 lr in 2 steps; anything beyond that is a real difference
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2.5e-3



def _sorted_class_folder(root, per_class=16):
    """An imagefolder sorted by class, as such folders are stored: class a's images, then class b's; image i is a
    flat 8x8 grey of value i (class a) or 128 + i (class b), so a batch tells which images it holds."""
    from PIL import Image

    for name, base in (("a", 0), ("b", 128)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8), base + i, dtype=np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def test_streamed_batches_are_shuffled_each_epoch_and_disjoint_across_ranks(tmp_path):
    """--streaming on a class-sorted folder: batches mix classes, each epoch has a new order, two ranks read
    disjoint halves that together are the whole epoch, and the order is the same when read again (resume)."""
    from ddpm_hf.data import load_image_dataset

    folder = _sorted_class_folder(tmp_path / "sorted")

    def stream(rank=0, world=1, seed=0):
        data = load_image_dataset(train_data_dir=str(folder), streaming=True)
        return StreamBatches(data, "image", 8, 1, True, 8, seed, rank, world)

    def ids(batch):
        return batch[:, 0, 0, 0].tolist()

    one = stream()
    epochs = [[ids(one.batch(k)) for k in range(e * 4, e * 4 + 4)] for e in range(2)]
    for epoch in epochs:
        assert sorted(sum(epoch, [])) == list(range(16)) + list(range(128, 144))  # every image once per epoch
        assert any(min(b) < 128 <= max(b) for b in epoch)  # classes mixed within batches
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    again = stream()
    assert [ids(again.batch(k)) for k in range(8)] == sum(epochs, [])  # the same order when read again
    assert ids(again.batch(7)) == epochs[1][-1]  # the batch just read, asked for again (a retried step)
    with pytest.raises(ValueError, match="forwards only"):
        again.batch(5)
    assert [ids(stream(seed=1).batch(k)) for k in range(4)] != epochs[0]  # and another for another seed
    halves = [sum((ids(stream(rank, 2).batch(k)) for k in range(2)), []) for rank in range(2)]
    assert not set(halves[0]) & set(halves[1]) and len(halves[0]) == len(halves[1]) == 16


def test_micro_batches_of_each_step():
    # 6 micro-batches per epoch with 4 accumulated: steps of 4 then 2 micro-batches, epochs never straddled
    assert [list(micro_batches(s, 4, 6)) for s in range(4)] == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]]
    assert [list(micro_batches(s, 1, 3)) for s in range(3)] == [[0], [1], [2]]
    assert list(micro_batches(5, 2, None)) == [10, 11]  # streaming: no epochs


@pytest.mark.slow
def test_num_epochs_with_gradient_accumulation(tmp_path):
    """--num_epochs 2 with 4 accumulated micro-batches over 6 micro-batches an epoch: 2 optimizer steps an epoch (the
    second with the 2 remaining micro-batches), so the run sees exactly 2 epochs of images and epoch-based saving
    happens at the end of epoch 1."""
    images = png_folder(tmp_path / "images", n=12, size=(8, 8), mode="L")
    out = tmp_path / "run"
    run_train("--train_data_dir", str(images), "--resolution", "8", "--output_dir", str(out), "--num_epochs", "2",
           "--train_batch_size", "2", "--gradient_accumulation_steps", "4", "--save_images_epochs", "1",
           "--checkpointing_steps", "100", cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["images_seen"] == 2 * 12
    assert [h["epoch"] for h in read_history(out)] == [1, 1, 2, 2]
    assert (out / "samples-epoch1" / "grid.png").is_file() and not (out / "samples-epoch2").exists()


def _wandb_records(path):
    """The protobuf Records of a .wandb file (wandb 0.31 no longer ships a Python reader): a 7-byte header (":W&B",
    magic, version), then LevelDB log blocks of 32 KiB, each record a 7-byte header (crc32c, length, type: 1 full,
    2 first, 3 middle, 4 last) and its data."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_wandb_logger_offline(tmp_path):
    """--logger wandb (accelerate's tracker, as train_unconditional.py has it) with WANDB_MODE=offline and no
    network: the run's files land in --logging_dir, and the run file holds every step's loss as history.jsonl has
    it, the settings without the token, and the sample grid and strip."""
    out = tmp_path / "run"
    run_train("--logger", "wandb", "--output_dir", str(out), "--max_train_steps", "3", "--checkpointing_steps", "100",
           "--eval_split", "", "--hub_token", "hf_not_a_real_token_value_000000000", cwd=tmp_path,
           env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    (run_file,) = (out / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    losses, settings = [], {}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            losses.append(items["loss"])
        elif kind == "config":
            settings.update({i.key: json.loads(i.value_json) for i in record.config.update})
    assert losses == [h["loss"] for h in read_history(out)]
    assert settings["learning_rate"] == 1e-3 and settings["logger"] == "wandb" and "hub_token" not in settings
    assert b"hf_not_a_real_token" not in run_file.read_bytes()
    media = {p.name.split("_")[0] for p in run_file.parent.glob("files/media/images/samples/*.png")}
    assert media == {"grid", "strip"}

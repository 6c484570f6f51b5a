"""`ddpm-hf evaluate`: the distances against closed forms and ported references, the digits metric's ranking, the
stratified bound estimate against the full bound, and the whole command on a tiny trained run with an Inception
file made here (the real one is a download)."""

import json
import shutil
import time

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from ddpm_hf import DDPMHFScheduler, build_unet
from ddpm_hf.evaluation.digits import digits_arrays
from ddpm_hf.evaluation.bound import held_out_bits, stratified_bits
from ddpm_hf.evaluation.features import frechet_distance, kernel_distance, precision_recall

from helpers import cli_in_process, cli_subprocess, run_train, train_env


# ---------------------------------------------------------------------------------------------- distances


def _pytorch_fid_reference(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's calculate_frechet_distance (mseitzer/pytorch-fid, src/pytorch_fid/fid_score.py), ported."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))  # (pytorch-fid passes disp=False, deprecated in SciPy 1.17)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_frechet_distance_against_pytorch_fid_and_the_closed_form():
    rng = np.random.default_rng(0)
    d, n = 8, 20000
    mu_a, mu_b = np.zeros(d), np.linspace(0, 1, d)
    var_a, var_b = np.linspace(0.5, 2, d), np.linspace(1, 3, d)
    a = mu_a + rng.standard_normal((n, d)) * np.sqrt(var_a)
    b = mu_b + rng.standard_normal((n, d)) * np.sqrt(var_b)
    ours = frechet_distance(a, b)
    reference = _pytorch_fid_reference(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert ours == pytest.approx(reference, rel=1e-6)
    # diagonal Gaussians: ||mu_a - mu_b||^2 + sum (sqrt(var_a) - sqrt(var_b))^2
    closed = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert ours == pytest.approx(closed, abs=0.05)
    assert frechet_distance(a[: n // 2], a[n // 2 :]) < 0.01


def _polynomial_mmd_reference(x, y):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018; mbinkowski/MMD-GAN, gan/compute_scores.py
    polynomial_mmd), ported."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m = len(x)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kernel_distance_against_the_mmd_gan_reference():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, 16)), rng.standard_normal((300, 16)) + 0.3
    mean, std = kernel_distance(x, y, subsets=1, subset_size=300)  # one subset = the whole sets
    assert mean == pytest.approx(_polynomial_mmd_reference(x, y), rel=1e-9) and std == 0
    same, _ = kernel_distance(x[:150], x[150:], subsets=20, subset_size=100)
    assert abs(same) < 0.1 * mean


def test_precision_recall_cases():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((400, 4))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 50) == (0.0, 0.0)  # disjoint manifolds
    # samples collapsed onto one corner of the data: precise, but they recall little of it
    corner = real[np.argsort(real[:, 0])[-40:]]
    precision, recall = precision_recall(real, corner)
    assert precision == 1.0 and recall < 0.3


# ---------------------------------------------------------------------------------------------- the digits metric


# (the digits metric itself: tests/test_digits_metric.py)


# ---------------------------------------------------------------------------------------------- the bound


def test_stratified_estimate_is_unbiased_for_the_full_bound():
    """The K-term stratified estimate of the bound agrees with the full T-term bound (both Monte Carlo over x_t)
    within their standard errors, on a random 20-step model, and K = T reproduces a full evaluation's size."""
    torch.manual_seed(0)
    unet = build_unet("cpu-8", learned_variance=True).eval()
    scheduler = DDPMHFScheduler(num_train_timesteps=20, variance_type="learned_range")
    images, _ = digits_arrays("test")
    images = images[:90]
    with torch.no_grad():
        full = held_out_bits(unet, scheduler, images, 90, seed=0)[:, 0]
        estimates = torch.cat([stratified_bits(unet, scheduler, images, 90, seed=s, num_timesteps=5)[0][:, 0]
                               for s in range(4)])
    diff = estimates.mean() - full.mean()
    stderr = (estimates.var() / len(estimates) + full.var() / len(full)).sqrt()
    assert abs(diff) < 4 * stderr, (estimates.mean(), full.mean(), stderr)
    assert estimates.std() > full.std()  # the estimate pays for its fewer terms with variance
    rows, strata, per_stratum = stratified_bits(unet, scheduler, images[:4], 4, seed=0, num_timesteps=20)
    assert strata == [(t, t + 1) for t in range(1, 20)] and per_stratum.shape == (19,)


@pytest.mark.parametrize("estimate", [None, 5])
def test_a_stop_request_ends_the_bound_at_its_next_term_on_every_rank(estimate):
    """``evaluate_on_all_ranks(should_stop=...)`` (a training run's signal flag) asks before every term: once it
    says stop, no further UNet call is made and None is returned (no partial score); never asked to stop, it
    returns the full bound of ``held_out_bits``."""
    from accelerate import Accelerator

    from ddpm_hf.evaluation.bound import evaluate_on_all_ranks, summarize_bits

    torch.manual_seed(0)
    unet = build_unet("cpu-8", learned_variance=True).eval()
    scheduler = DDPMHFScheduler(num_train_timesteps=20, variance_type="learned_range")
    images = digits_arrays("test")[0][:12]
    calls = []
    unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    asked = []

    def stop_after_7():
        asked.append(1)
        return len(asked) > 7

    accelerator = Accelerator(cpu=True)
    with torch.no_grad():
        assert evaluate_on_all_ranks(accelerator, unet, scheduler, images, 4, 0, estimate,
                                     should_stop=stop_after_7) is None
        assert len(calls) == 7  # terms of the first batch only, then nothing
        calls.clear()
        result = evaluate_on_all_ranks(accelerator, unet, scheduler, images, 4, 0, estimate, should_stop=lambda: False)
        assert len(calls) == 3 * (estimate or 20)
        if estimate is None:
            assert result == summarize_bits(held_out_bits(unet, scheduler, images, 4, 0))


# ---------------------------------------------------------------------------------------------- the command


class InceptionStandIn(torch.nn.Module):
    """A randomly initialised network with the interface of NVIDIA's TorchScript `inception-2015-12-05.pt`:
    forward(img (N, 3, H, W) floats in [0, 255], return_features) -> (N, 2048) pool features or (N, 1008) logits,
    resizing to 299x299 itself. (The real file's layers are inside it; ddpm-hf only calls this interface.)"""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)
        self.proj = torch.nn.Conv2d(16, 2048, 1)
        self.fc = torch.nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear",
                                            align_corners=False)
        x = torch.relu(self.conv((x - 128) / 128))
        # the 1x1 projection of the spatial mean: the spatial mean of the 1x1 projection (both linear), without
        # projecting 75x75 positions to 2048 channels first
        x = self.proj(x.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return x if return_features else self.fc(x)


def _seeded_cache(tmp_path):
    """A fresh, empty DDPM_HF_CACHE for one command: its reference features start uncached."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory):
    """A copy of the session's tiny run (conftest.trained_run) that this module's tests evaluate, and an Inception
    stand-in file."""
    folder = tmp_path_factory.mktemp("evaluate")
    shutil.copytree(trained_run, folder / "run", symlinks=True)
    weights = folder / "inception-stand-in.pt"
    torch.manual_seed(0)
    torch.jit.script(InceptionStandIn().eval()).save(str(weights))
    return folder / "run", weights


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_every_metric_on_a_run(run, tmp_path, capsys, monkeypatch, digits_classifier):
    """The whole command in this process (what it computes and writes; the command as a process of its own:
    test_evaluate_without_inception_weights_fails_fast, test_evaluate_a_hub_repo)."""
    out, weights = run
    monkeypatch.setenv("DDPM_HF_CACHE", str(_seeded_cache(tmp_path)))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    # few images: each costs an Inception forward pass at 299x299 (about 6 GFLOP)
    args = ["evaluate", str(out), "--metrics", "bpd,fid,kid,prc,digits", "--num_samples", "12",
            "--num_inference_steps", "5,2", "--bpd_timesteps", "6", "--max_eval_images", "16",
            "--max_reference_images", "32", "--inception_weights", str(weights), "--name", "e2e",
            "--update_model_card"]
    code, _, err = cli_in_process(capsys, *args)
    assert code == 0, err[-3000:]
    report = json.loads((out / "eval-e2e.json").read_text())
    assert report["bpd"]["estimate"] and report["bpd"]["num_images"] == 16 and report["bpd"]["bits_per_dim"] > 0
    assert [s["num_inference_steps"] for s in report["sampling"]] == [5, 2]
    for sampled in report["sampling"]:
        scores = sampled["scores"]
        assert set(scores) == {"fid", "kid", "precision", "recall", "digits_fd"}
        assert scores["fid"]["value"] > 0 and 0 <= scores["precision"]["value"] <= 1
        assert "TF-Inception" in scores["fid"]["features"] and "32 images" in scores["fid"]["reference"]
        assert "not comparable to Inception FID" in scores["digits_fd"]["features"]
        digits = scores["digits_fd"]  # against all 1,797 digits, the real-data floor at 12 samples beside it
        assert digits["num_reference"] == 1797 and digits["digits_fd_floor_split"] == [12, 1785]
        assert digits["digits_fd_floor"] > 0 and digits["digits_fd_over_floor"] == digits["value"] / digits[
            "digits_fd_floor"]
        assert sampled["num_samples"] == 12 and sampled["sampling_seconds"] > 0
    for picture in ("eval-e2e-bpd.png", "eval-e2e-steps.png", "eval-e2e-samples-5steps.png"):
        assert (out / picture).is_file()
    # the reference features were cached once, and a second evaluation reads them
    cached = list((tmp_path / "cache" / "reference_features").glob("*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    code, _, err = cli_in_process(capsys, *args[:-3], "--name", "again", "--num_inference_steps", "5")
    assert code == 0, err[-3000:]
    assert cached[0].stat().st_mtime_ns == stamp
    again = json.loads((out / "eval-again.json").read_text())
    assert again["sampling"][0]["scores"]["fid"]["value"] == report["sampling"][0]["scores"]["fid"]["value"]
    # merged into metrics.json and the card's model-index
    metrics = json.loads((out / "metrics.json").read_text())
    entries = {(e["metric"], e["num_inference_steps"]) for e in metrics["sample_metrics"]}
    assert {("fid", 5), ("fid", 2), ("kid", 5), ("digits_fd", 2)} <= entries
    assert metrics["bits_per_dim_estimate"]["num_images"] == 16
    assert all(e["floor"] > 0 for e in metrics["sample_metrics"] if e["metric"] == "digits_fd")
    card = ModelCard.load(out / "README.md")
    types = {(r.metric_type, r.metric_config) for r in card.data.eval_results}
    assert ("fid", "5 steps") in types and ("bits_per_dim", None) in types
    assert "FID (lower is better): 12 samples, 5 steps" in card.text
    assert "(real digits at this sample count: " in card.text


@pytest.mark.slow
def test_evaluate_without_inception_weights_fails_fast(run, tmp_path, capsys):
    """No --inception_weights, an empty torch cache, no network: one message naming the file and the flag, exit
    code 2, in seconds (in a process of its own: once offline by HF_HUB_OFFLINE, once through a real download
    attempt). A file that is not there: named."""
    out, _ = run
    for offline in (True, False):
        env = dict(train_env(), TORCH_HOME=str(tmp_path / "torch"))
        if not offline:
            env.pop("HF_HUB_OFFLINE")
        start = time.time()
        r = cli_subprocess("evaluate", str(out), "--metrics", "fid", env=env, timeout=120)
        assert r.returncode == 2 and time.time() - start < 60
        assert "inception-2015-12-05.pt" in r.stderr and "--inception_weights" in r.stderr
        assert "Traceback" not in r.stderr
    code, _, err = cli_in_process(capsys, "evaluate", out, "--metrics", "fid", "--inception_weights",
                                  tmp_path / "nope.pt")
    assert code == 2 and "no such file" in err


def test_evaluate_refuses_the_digits_metric_for_other_data(tmp_path, capsys):
    from ddpm_hf import DDPMHFPipeline

    folder = tmp_path / "rgb"
    DDPMHFPipeline(unet=build_unet("cpu-8", channels=3), scheduler=DDPMHFScheduler(num_train_timesteps=10)
                   ).save_pretrained(folder)
    code, _, err = cli_in_process(capsys, "evaluate", folder, "--metrics", "digits", "--train_data_dir", tmp_path)
    assert code == 2 and "embedded 8x8 digits only" in err.splitlines()[-1]


@pytest.mark.slow
def test_periodic_metrics_during_training(run, tmp_path, capsys, digits_classifier):
    """--eval_steps with --eval_metrics bpd,digits,fid: each evaluated step's history record (and tensorboard) carries
    the bound estimate, the digits metric and FID (with the stand-in Inception file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, weights = run
    out = tmp_path / "run"
    run_train("--output_dir", str(out), "--max_train_steps", "3", "--checkpointing_steps", "100", "--logger",
           "tensorboard", "--eval_steps", "1", "--eval_metrics", "bpd,digits,fid", "--eval_bpd_timesteps", "4",
           "--eval_num_samples", "8", "--eval_inference_steps", "2", "--inception_weights", str(weights), cwd=tmp_path)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for record in history[:2]:
        assert {"eval/bits_per_dim_estimate", "eval/digits_fd", "eval/digits_fd_floor", "eval/fid"} <= set(record), \
            record
        assert record["eval/digits_fd"] > 0 and record["eval/fid"] > 0
    assert "eval/digits_fd" not in history[2]  # the last step: the end-of-run evaluation covers it
    events = EventAccumulator(str(out / "logs" / "ddpm-hf"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("eval/digits_fd")] == [1, 2]
    code, _, err = cli_in_process(capsys, "train", "--eval_metrics", "digits", "--train_data_dir", tmp_path)
    assert code == 2 and "embedded digits only" in err.splitlines()[-1]


@pytest.mark.slow
def test_evaluate_a_hub_repo(run, tmp_path, digits_classifier):
    """MODEL as a Hub repo id (a loopback Hub): the pipeline and its training_args.json come over HTTP, the report
    lands in --output_dir, the run's own data (the digits) is the default reference."""
    from hub_server import HubServer

    out, _ = run
    with HubServer(tmp_path / "hub") as hub:
        hub.seed_repo("ns/tiny-digits", out)
        env = hub.client_env(tmp_path / "hf_home")
        env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", DDPM_HF_CACHE=str(_seeded_cache(tmp_path)))
        r = cli_subprocess("evaluate", "ns/tiny-digits", "--metrics", "digits", "--num_samples", "8", "--num_inference_steps",
                 "2", "--name", "hub", "--output_dir", str(tmp_path / "scores"), "--timestep_spacing", "trailing",
                 env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert any("training_args.json" in path for _, path in hub.requests)
    report = json.loads((tmp_path / "scores" / "eval-hub.json").read_text())
    assert report["model"] == "ns/tiny-digits" and report["dataset"] == "digits"
    assert report["timestep_spacing"] == "trailing"
    assert report["sampling"][0]["scores"]["digits_fd"]["num_samples"] == 8

"""The guidance sweep of a class-conditional digits model (ddpm_hf.evaluation.conditional, issue 18 sec. 3).

Accuracy: checked on real digits with their true labels (it must equal the classifier's own held-out accuracy,
computed independently in digits.train_digits_cnn's way) and with shuffled labels (about 1/10, binomial bounds).
End to end: an "oracle" conditional UNet whose eps prediction points every x_t at one real digit of the requested
class, eps = (x_t - sqrt(abar_t) x0_c) / sqrt(1 - abar_t) (Ho eq. 4 solved for eps), and at a digit "0" for the null
class. Through the real pipeline, classifier-free guidance (eps affine in x0 at fixed x_t, so the guided x0 is
x0_null + s (x0_c - x0_null)) and DDIM with eta = 0 (Song et al. eq. 12: the x0 prediction is exact at every step),
s = 1 returns the class prototypes (accuracy 100%) and s = 0 the null prototype "0" for every request (accuracy
exactly 1/10)."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from ddpm_hf import DDPMHFPipeline
from ddpm_hf.errors import BadArgument
from ddpm_hf.evaluation.conditional import (choose_guidance, conditional_report, guidance_sweep, label_agreement,
                                            requested_digits, summarize, sweep_table)
from ddpm_hf.evaluation.digits import digits_arrays

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classifier(digits_classifier):
    return digits_classifier


def test_true_labels_give_the_classifiers_held_out_accuracy(classifier):
    images, labels = digits_arrays("test")
    result = label_agreement(images, labels, classifier)
    with torch.no_grad():  # the classifier's accuracy computed here, directly from its logits
        logits = classifier.network(images.float() / 255.0)
    expected = (logits.argmax(1).numpy() == labels).mean()
    assert result["accuracy"] == pytest.approx(expected) == pytest.approx(classifier.test_accuracy)
    assert result["accuracy"] > 0.9
    assert result["accuracy_stderr"] == pytest.approx(np.sqrt(expected * (1 - expected) / len(labels)))
    confusion = np.array(result["confusion"])
    assert confusion.sum() == len(labels) and np.trace(confusion) == round(expected * len(labels))
    assert (confusion.sum(axis=1) == np.bincount(labels, minlength=10)).all()
    for d in range(10):
        assert result["per_class_accuracy"][d] == pytest.approx(confusion[d, d] / confusion[d].sum())


def test_shuffled_labels_give_about_one_in_ten(classifier):
    images, labels = digits_arrays("all")
    shuffled = np.random.default_rng(0).permutation(labels)
    result = label_agreement(images, shuffled, classifier)
    # chance agreement: sum_c p(requested c) p(recognised c) ~ 0.1; binomial std at N = 1797 is 0.007
    assert abs(result["accuracy"] - 0.1) < 0.03
    assert abs(label_agreement(images, (labels + 1) % 10, classifier)["accuracy"]) < 0.05  # every label wrong


def test_bad_requests_are_refused(classifier):
    images, labels = digits_arrays("test")
    with pytest.raises(BadArgument, match="180 images"):
        label_agreement(images, labels[:-1], classifier)
    with pytest.raises(BadArgument, match="0..9"):
        label_agreement(images, labels + 1, classifier)


class OracleUNet(UNet2DModel):
    """A UNet2DModel (its config and class embedding table make it a conditional model to the pipeline) whose output
    is the eps that makes x0_hat equal the prototype of the requested class: eps = (x_t - sqrt(abar_t) x0) /
    sqrt(1 - abar_t) (Ho eq. 4). The network's own weights are not used."""

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        abar = self.alphas_cumprod[int(timestep)]
        x0 = self.prototypes[class_labels]
        eps = (sample - abar.sqrt() * x0) / (1 - abar).sqrt()
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=eps) if return_dict else (eps,)


def make_oracle_pipe(images, labels, classifier):
    """The oracle pipeline over real digits ``images`` (N, 1, H, W) uint8 with their ``labels``: per class, the first
    digit the classifier recognises is the prototype; the null class (id 10) gets the "0" prototype."""
    recognised = classifier.probabilities(images).argmax(1)
    picks = [int(np.flatnonzero((labels == c) & (recognised == c))[0]) for c in range(10)]
    prototypes = images[picks + [picks[0]]].float() / 127.5 - 1  # (11, 1, H, W) in [-1, 1]
    unet = OracleUNet(sample_size=images.shape[-1], in_channels=1, out_channels=1, block_out_channels=(8, 8),
                      layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=11)
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    unet.alphas_cumprod, unet.prototypes = scheduler.alphas_cumprod, prototypes
    pipe = DDPMHFPipeline(unet=unet, scheduler=scheduler, id2label={i: str(i) for i in range(10)}, null_class_id=10)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def oracle_pipe(classifier):
    return make_oracle_pipe(*digits_arrays("test"), classifier)


def test_requested_digits_follow_id2label(oracle_pipe):
    assert requested_digits(oracle_pipe, [0, 3, 9]).tolist() == [0, 3, 9]
    pipe = DDPMHFPipeline(unet=oracle_pipe.unet, scheduler=oracle_pipe.scheduler,
                          id2label={i: str(9 - i) for i in range(10)}, null_class_id=10)  # names, not ids, count
    assert requested_digits(pipe, [0, 3, 9]).tolist() == [9, 6, 0]
    cats = DDPMHFPipeline(unet=oracle_pipe.unet, scheduler=oracle_pipe.scheduler,
                          id2label={i: f"cat{i}" for i in range(10)}, null_class_id=10)
    with pytest.raises(BadArgument, match="cat3"):
        requested_digits(cats, [3])


@pytest.mark.slow  # about 10 s idle, 30 s on a busy machine
def test_sweep_end_to_end_through_the_pipeline_and_guidance(oracle_pipe, classifier, tmp_path):
    rows = guidance_sweep(oracle_pipe, (0, 1, 2), per_class=3, num_inference_steps=10, batch_size=16, seed=0,
                          classifier=classifier, floor_draws=3, grid_dir=str(tmp_path), name="oracle")
    assert [r["guidance_scale"] for r in rows] == [0, 1, 2] and all(r["num_samples"] == 30 for r in rows)
    by_scale = {r["guidance_scale"]: r for r in rows}
    assert by_scale[1]["accuracy"] == 1.0  # s = 1: the conditional model alone, each class's prototype
    assert by_scale[0]["accuracy"] == pytest.approx(0.1)  # s = 0: the null class' "0" for every request
    assert by_scale[0]["per_class_accuracy"] == {d: float(d == 0) for d in range(10)}
    assert np.array(by_scale[0]["confusion"])[:, 0].tolist() == [3] * 10
    # the floor is computed once and shared; the samples' FD sits above it (30 images, at most 10 distinct)
    assert len({(r["digits_fd_floor"], r["digits_fd_floor_std"]) for r in rows}) == 1
    assert by_scale[1]["digits_fd"] > by_scale[1]["digits_fd_floor"]
    assert sorted(os.listdir(tmp_path)) == ["oracle-s0.png", "oracle-s1.png", "oracle-s2.png"]
    assert all(r["metric"] == "digits" for r in rows)


@pytest.mark.slow  # about 15 s idle
def test_mnist_sweep_scores_with_the_mnist_classifier_and_metric(mnist_classifier):
    """The same oracle at 28x28 over held-out MNIST digits, swept with metric="mnist": the MNIST classifier judges
    the labels (s = 1: every prototype recognised; s = 0: the null "0" for every request, exactly 1/10) and the MNIST
    metric's keys, floor and FD are in the rows."""
    from ddpm_hf.evaluation.mnist import mnist_arrays

    images, labels = mnist_arrays("test")
    pipe = make_oracle_pipe(images, labels, mnist_classifier)
    rows = guidance_sweep(pipe, (0, 1), per_class=3, num_inference_steps=10, batch_size=30, seed=0,
                          floor_draws=3, metric="mnist")
    by_scale = {r["guidance_scale"]: r for r in rows}
    assert by_scale[1]["accuracy"] == 1.0 and by_scale[0]["accuracy"] == pytest.approx(0.1)
    assert by_scale[1]["classifier_test_accuracy"] == mnist_classifier.test_accuracy
    assert all(r["metric"] == "mnist" and "digits_fd" not in r for r in rows)
    assert by_scale[1]["mnist_fd"] > by_scale[1]["mnist_fd_floor"] > 0  # 30 images, 10 distinct
    summary = summarize(rows)
    assert summary[0]["metric"] == "mnist" and summary[1]["mnist_fd"]["values"] == [by_scale[1]["mnist_fd"]]
    assert "floor of the mnist FD at N = 30" in sweep_table(summary)
    # the MNIST goal is 98%: s = 1 (100%) qualifies, s = 0 does not
    assert choose_guidance(summary) == 1.0
    with pytest.raises(BadArgument, match="digits, mnist"):
        guidance_sweep(pipe, (1,), per_class=1, num_inference_steps=2, metric="cifar")


@pytest.mark.slow
def test_report_writes_json_plot_and_grids(oracle_pipe, tmp_path):
    report = conditional_report(oracle_pipe, str(tmp_path), name="t", guidance_scales=(0, 1), per_class=2,
                                num_inference_steps=5, batch_size=20, log=lambda *_: None)
    with open(report["path"]) as f:
        saved = json.load(f)
    assert [r["guidance_scale"] for r in saved["rows"]] == [0, 1] and saved["rows"][1]["accuracy"] == 1.0
    assert os.path.getsize(tmp_path / "eval-t-guidance.png") > 10_000
    assert sorted(os.listdir(tmp_path / "eval-t-guidance")) == ["t-s0.png", "t-s1.png"]
    assert saved["table"].count("\n| ") == 2  # a line per scale below the header


def fake_rows():
    """Two seeds x three scales, with numbers chosen so that the choice is known."""
    acc = {0: (0.1, 0.12), 1: (0.94, 0.97), 3: (0.97, 0.99)}
    fd = {0: (3.0, 3.2), 1: (2.0, 2.4), 3: (2.5, 2.7)}
    return [{"guidance_scale": s, "seed": k, "num_samples": 1000, "accuracy": acc[s][k], "digits_fd": fd[s][k],
             "digits_fd_over_floor": fd[s][k] / 0.5, "digits_fd_floor": 0.5, "digits_fd_floor_std": 0.02,
             "classifier_test_accuracy": 0.97} for k in (0, 1) for s in (3, 0, 1)]


def test_summary_table_and_choice():
    summary = summarize(fake_rows())
    assert [e["guidance_scale"] for e in summary] == [0, 1, 3]
    assert summary[1]["accuracy"]["mean"] == pytest.approx(0.955)  # >= 95% on average, not for every seed
    assert summary[1]["accuracy"]["std"] == pytest.approx(np.std([0.94, 0.97], ddof=1))
    assert summary[2]["digits_fd"]["values"] == [2.5, 2.7] and summary[0]["digits_fd_floor"] == 0.5
    # s = 1 has the lowest FD but one seed below 95%: s = 3 (both seeds >= 95%); a baseline FD of 2.5 rules it out
    assert choose_guidance(summary) == 3
    assert choose_guidance(summary, baseline_fd=2.5) is None
    assert choose_guidance(summary, baseline_fd=2.6) == 3
    table = sweep_table(summary, {"name": "uncond", "fd": 2.6, "fd_std": 0.1, "values": [2.5, 2.7]})
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 3 + 1 and all(line.count("|") == 7 for line in lines)
    assert "| 3 | 98.0% +- 1.4% | 97.0% / 99.0% | 2.600 +- 0.141 |" in table
    assert "floor of the digits FD at N = 1000: 0.500 +- 0.020" in table


def _saved_pipeline(folder, conditional):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11 if conditional else None)
    classes = dict(id2label={i: str(i) for i in range(10)}, null_class_id=10) if conditional else {}
    from ddpm_hf import DDPMHFScheduler

    DDPMHFPipeline(unet, DDPMHFScheduler(num_train_timesteps=20), **classes).save_pretrained(folder)
    return str(folder)


def test_evaluate_runs_the_sweep_for_conditional_models_only(tmp_path):
    """`ddpm-hf evaluate --metrics guidance` (EvaluationConfig(metrics=("guidance",))): the sweep's JSON, plot and
    summary land beside the eval report, one entry per requested scale with the requested sample count; an
    unconditional model is refused with the reason."""
    from ddpm_hf.evaluation import EvaluationConfig, evaluate

    folder = _saved_pipeline(tmp_path / "cond", conditional=True)
    config = EvaluationConfig(metrics=("guidance",), num_samples=20, steps=(3,), guidance_scales=(0, 2), name="g",
                              scheduler="ddim")
    report = evaluate(folder, config, progress=False, log=lambda *_: None)
    summary = report["guidance"]["summary"]
    assert [e["guidance_scale"] for e in summary] == [0, 2] and all(e["num_samples"] == 20 for e in summary)
    assert all(0 <= e["accuracy"]["mean"] <= 1 for e in summary) and report["guidance"]["num_inference_steps"] == 3
    saved = json.loads((tmp_path / "cond" / "eval-g-guidance.json").read_text())
    assert saved["scheduler"] == "DDIMScheduler" and os.path.isfile(tmp_path / "cond" / "eval-g-guidance.png")
    with pytest.raises(BadArgument, match="class-conditional"):
        evaluate(_saved_pipeline(tmp_path / "uncond", conditional=False), config, progress=False, log=lambda *_: None)
    with pytest.raises(BadArgument, match="guidance_scales"):
        EvaluationConfig(metrics=("guidance",), guidance_scales=(-1,))


@pytest.mark.slow  # about 20 s idle
def test_evaluate_sweeps_an_mnist_model_with_the_mnist_metric(tmp_path):
    """`ddpm-hf evaluate --metrics guidance` on a 28x28 conditional model of --dataset_name mnist scores with the
    MNIST classifier and metric (its rows and summary carry mnist_fd, not digits_fd); the same model said to be of
    the digits is refused, naming the datasets the sweep can judge."""
    from ddpm_hf import DDPMHFScheduler
    from ddpm_hf.evaluation import EvaluationConfig, evaluate

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11)
    folder = str(tmp_path / "cond28")
    DDPMHFPipeline(unet, DDPMHFScheduler(num_train_timesteps=20), id2label={i: str(i) for i in range(10)},
                   null_class_id=10).save_pretrained(folder)
    config = EvaluationConfig(metrics=("guidance",), num_samples=20, steps=(2,), guidance_scales=(1,), name="g",
                              scheduler="ddim", dataset_name="mnist")
    report = evaluate(folder, config, progress=False, log=lambda *_: None)
    assert report["guidance"]["metric"] == "mnist"
    entry = report["guidance"]["summary"][0]
    assert entry["metric"] == "mnist" and entry["mnist_fd"]["mean"] > entry["mnist_fd_floor"] > 0
    assert entry["classifier_test_accuracy"] == pytest.approx(0.974)  # the MNIST classifier's, not the digits one's
    saved = json.loads((tmp_path / "cond28" / "eval-g-guidance.json").read_text())
    assert saved["metric"] == "mnist" and saved["rows"][0]["mnist_fd"] == entry["mnist_fd"]["mean"]
    digits = EvaluationConfig(metrics=("guidance",), num_samples=20, steps=(2,), guidance_scales=(1,), name="g")
    with pytest.raises(BadArgument, match="digits or MNIST"):
        evaluate(folder, digits, progress=False, log=lambda *_: None)

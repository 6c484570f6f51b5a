"""Consistency distillation (ddpm_hf.distillation, `ddpm-hf distill`): the parameterisation and the time grid against
diffusers' LCMScheduler (an independent implementation, which samples the student), the teacher's ODE step against
the closed-form probability-flow ODE of Gaussian data, a short run that learns the teacher's ODE map, resume, and the
student loading and sampling without ddpm_hf."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler
from ddpm_hf.distillation.consistency import (boundary_scalings, consistency_function, skip_timesteps,
                                              teacher_ode_step)
from helpers import cli_in_fixture, cli_in_process, local_env, read_weights, run_python

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------ the equations


@pytest.mark.parametrize("t", [0, 1, 19, 259, 499, 999])
def test_boundary_scalings_are_lcm_schedulers(t):
    """c_skip, c_out (Song et al. 2023 eq. 3, LCM eq. 9) as diffusers' LCMScheduler computes them for sampling."""
    c_skip, c_out = boundary_scalings(torch.tensor([t]))
    theirs = LCMScheduler().get_scalings_for_boundary_condition_discrete(t)
    assert float(c_skip) == pytest.approx(float(theirs[0]), rel=1e-12, abs=1e-15)
    assert float(c_out) == pytest.approx(float(theirs[1]), rel=1e-12, abs=1e-15)


def test_the_boundary_condition_holds_for_any_network():
    """f(x, 0) = x exactly (and at t = -1, the clean image), whatever the network outputs; above 0, c_skip decays
    and c_out rises to 1 (f is the network's x_0 at large t)."""
    scheduler = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    net = lambda x, t, class_labels=None: SimpleNamespace(sample=torch.full_like(x, 7.0))  # noqa: E731
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (0, -1):
        assert torch.equal(consistency_function(net, scheduler, x, torch.full((3,), t)), x)
    c_skip, c_out = boundary_scalings(torch.tensor([1, 19, 999]))
    assert c_skip[0] < 0.01 and c_out[2] > 0.999999 and (c_skip.diff() < 0).all()


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_consistency_function_is_lcm_schedulers_denoised(prediction_type):
    """f(x_t, t) of a network output equals LCMScheduler.step's ``denoised`` (diffusers' implementation of the same
    parameterisation) for the same output, at each timestep of its 4-step chain."""
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False)
    theirs = LCMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False,
                          original_inference_steps=50)
    theirs.set_timesteps(4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g)
    for t in theirs.timesteps.tolist():
        output = torch.randn(x.shape, generator=g)
        net = lambda x, t, class_labels=None, o=output: SimpleNamespace(sample=o)  # noqa: E731
        got = consistency_function(net, ours, x, torch.full((2,), t))
        step = theirs.step(output, t, x, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(got, step.denoised, atol=1e-5, rtol=1e-5), t
        x = step.prev_sample


@pytest.mark.parametrize("T,N", [(1000, 50), (1000, 4), (20, 4), (20, 2)])
def test_the_time_grid_is_the_one_lcm_scheduler_samples_on(T, N):
    theirs = LCMScheduler(num_train_timesteps=T, original_inference_steps=N)
    theirs.set_timesteps(N)
    assert skip_timesteps(T, N).tolist() == sorted(theirs.timesteps.tolist())


def _gaussian_teacher(scheduler, s2):
    """The exact noise predictor of data x_0 ~ N(0, s2 I): eps(x_t, t) = sqrt(1 - ab) x_t / (ab s2 + 1 - ab)."""
    ab = scheduler.alphas_cumprod.double()

    def eps(x, t, class_labels=None):
        a = ab[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(1 - a).sqrt() * x / (a * s2 + 1 - a))

    return eps, ab


# (t, s, how many times closer than DDIM the second-order step must land): over the default grid's steps of 20
# (measured 5.3e-5 .. 1.7e-4 relative against 3e-4 .. 2e-3); at t = T - 1 the path is straight (both exact to
# 1e-4); over half the chain it must still not be worse.
@pytest.mark.parametrize("t,s,gain", [(999, 979, 1), (499, 479, 20), (199, 179, 20), (59, 39, 5), (999, 499, 1)])
def test_teacher_second_order_step_beats_ddim_on_gaussian_data(t, s, gain):
    """For Gaussian data the probability-flow ODE is solved in closed form: in y = x / sqrt(ab), sigma =
    sqrt((1 - ab) / ab), y(sigma) = y(sigma_t) sqrt((s2 + sigma^2) / (s2 + sigma_t^2)). DPM-Solver++(2S)'s step (two
    calls) lands closer than DDIM's by ``gain``, and over a grid step of 20 both are within 0.5%."""
    s2 = 0.25
    scheduler = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    teacher, ab = _gaussian_teacher(scheduler, s2)
    x_t = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma = ((1 - ab) / ab).sqrt()
    exact = x_t / ab[t].sqrt() * ((s2 + sigma[s] ** 2) / (s2 + sigma[t] ** 2)).sqrt() * ab[s].sqrt()
    args = (teacher, scheduler, x_t, torch.full((64,), t), torch.full((64,), s))
    heun, euler = (teacher_ode_step(*args, solver=solver) for solver in ("dpm-solver++", "ddim"))
    scale = exact.abs().mean()
    heun_error, euler_error = (float((x - exact).abs().mean() / scale) for x in (heun, euler))
    assert heun_error <= euler_error / gain, (heun_error, euler_error)
    assert t - s > 20 or euler_error < 0.005, euler_error


# ------------------------------------------------------------------------------------ a run


DISTILL = ["--method", "consistency", "--num_teacher_steps", "4", "--train_batch_size", "16", "--num_sample_images", "4", "--logger", "none",
           "--eval_batch_size", "16"]


def _distill(capsys, teacher, out, *extra):
    code, _, err = cli_in_process(capsys, "distill", str(teacher), "--output_dir", str(out), *DISTILL, *extra)
    assert code == 0, err[-3000:]


@pytest.fixture(scope="module")
def student(trained_run, tmp_path_factory):
    """A student of the session's tiny trained run (T = 20), 4 grid points, 6 steps with checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("distill") / "student"
    cli_in_fixture("distill", trained_run, "--output_dir", out, *DISTILL, "--max_train_steps", "6",
                   "--checkpointing_steps", "2")
    return out


def test_the_run_leaves_a_pipeline_records_and_labelled_grids(student, trained_run):
    args = json.loads((student / "training_args.json").read_text())
    assert args["distillation"]["method"] == "consistency" and args["distillation"]["num_teacher_steps"] == 4
    assert args["distillation"]["teacher"] == str(trained_run) and args["prediction_type"] == "v_prediction"
    history = [json.loads(line) for line in (student / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, 7)) and all(np.isfinite(r["loss"]) for r in history)
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["teacher_train_seconds"] > 0
    index = json.loads((student / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"] and index["num_inference_steps"] == 4
    for steps in (1, 2, 4):
        assert (student / f"samples-{steps}-step" / "grid.png").is_file()
    assert sorted(p.name for p in student.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    card = (student / "README.md").read_text()
    assert "consistency distillation" in card and "with 1 to 4 UNet calls (default 4)" in card
    assert 'DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True)' in card
    assert f"(the teacher's training: {metrics['teacher_train_seconds']:,.0f} s)" in card
    assert "![2 UNet calls](samples-2-step/grid.png)" in card and str(trained_run) not in card


def test_the_card_shows_the_students_scores_beside_the_teachers(student, trained_run, tmp_path, capsys):
    """Scores merged by `ddpm-hf evaluate` into the student's and the teacher's metrics.json end up in one table
    and one plot of the student's card (`ddpm-hf card`)."""
    folder, teacher = tmp_path / "student", tmp_path / "teacher"
    shutil.copytree(student, folder)
    shutil.copytree(trained_run, teacher)
    args = json.loads((folder / "training_args.json").read_text())
    args["distillation"]["teacher"] = str(teacher)
    (folder / "training_args.json").write_text(json.dumps(args))
    entry = dict(metric="digits_fd", num_samples=100, floor=2.0, floor_std=0.1)
    for where, scores in ((folder, [(1, None, 3.5), (2, None, 3.0)]), (teacher, [(20, "dpmsolver-sde", 2.2)])):
        metrics = json.loads((where / "metrics.json").read_text())
        metrics["sample_metrics"] = [dict(entry, num_inference_steps=n, value=v, **({"sampler": s} if s else {}))
                                     for n, s, v in scores]
        (where / "metrics.json").write_text(json.dumps(metrics))
    code, _, err = cli_in_process(capsys, "card", str(folder), "--replace_edited_card")
    assert code == 0, err
    card = (folder / "README.md").read_text()
    assert "| student | 1 | 3.5 (digits_fd) | 100 | 2 |" in card and "| student | 2 | 3 (digits_fd) | 100 | 2 |" in card
    assert "| teacher, dpmsolver-sde (20 steps of dpmsolver-sde) | 20 | 2.2 (digits_fd) | 100 | 2 |" in card
    assert (folder / "images" / "sampler_quality.png").is_file()
    # a K-step student (progressive, distribution matching) has one count of calls: its one score is shown too
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["sample_metrics"] = metrics["sample_metrics"][1:]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "images" / "sampler_quality.png").unlink()
    assert cli_in_process(capsys, "card", str(folder), "--replace_edited_card")[0] == 0
    card = (folder / "README.md").read_text()
    assert "| student | 2 | 3 (digits_fd) | 100 | 2 |" in card and "| student | 1 |" not in card
    assert "| teacher, dpmsolver-sde (20 steps of dpmsolver-sde) | 20 | 2.2 (digits_fd) | 100 | 2 |" in card
    assert (folder / "images" / "sampler_quality.png").is_file()


def test_the_student_samples_in_k_calls_and_refuses_more_than_its_grid(student):
    pipe = DDPMHFPipeline.from_pretrained(student)
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    for k in (1, 2, 4):
        calls.clear()
        images = pipe(batch_size=2, num_inference_steps=k, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        assert len(calls) == k and images.shape == (2, 8, 8, 1)
    calls.clear()
    pipe(batch_size=1, output_type="np")  # the model's own default: 4 calls
    assert len(calls) == 4
    with pytest.raises(ValueError, match="samples on a grid of 4 points"):
        pipe(batch_size=1, num_inference_steps=5)
    with pytest.raises(ValueError, match="positive integer"):
        pipe(batch_size=1, num_inference_steps=0)


def test_sample_command_refuses_more_steps_than_the_grid(student, capsys, tmp_path):
    code, _, err = cli_in_process(capsys, "sample", str(student), "--num_inference_steps", "9", "--output_dir",
                                  str(tmp_path / "samples"))
    assert code == 2 and "samples on a grid of 4 points; give at most 4" in err


def test_resume_is_bit_identical(student, trained_run, tmp_path, capsys):
    """The run resumed from its checkpoint-4 ends with the same weights as the run that never stopped."""
    resumed = tmp_path / "resumed"
    shutil.copytree(student / "checkpoint-4", resumed / "checkpoint-4")
    _distill(capsys, trained_run, resumed, "--max_train_steps", "6", "--checkpointing_steps", "2",
             "--resume_from_checkpoint", "latest")
    ours, straight = read_weights(resumed), read_weights(student)
    assert ours.keys() == straight.keys() and all(torch.equal(ours[k], straight[k]) for k in ours)


@pytest.mark.slow
def test_the_student_loads_and_samples_without_ddpm_hf(student, tmp_path):
    expected = DDPMHFPipeline.from_pretrained(student)(batch_size=3, num_inference_steps=2, output_type="np",
                                                       generator=torch.Generator().manual_seed(5)).images
    out = run_python(
        """
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(ARGS["folder"], trust_remote_code=True)
        images = pipe(batch_size=3, num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(5)).images
        np.save(ARGS["out"], images)
        result({"pipeline": type(pipe).__module__, "scheduler": type(pipe.scheduler).__name__})
        """,
        {"folder": str(student), "out": str(tmp_path / "images.npy")}, env=local_env(tmp_path), block_ddpm_hf=True)
    assert out["scheduler"] == "LCMScheduler" and out["pipeline"].startswith("diffusers_modules.")
    np.testing.assert_allclose(np.load(tmp_path / "images.npy"), expected, atol=1e-6)


@pytest.mark.slow
def test_distillation_learns_the_teachers_ode_map(trained_run, tmp_path, capsys):
    """On 2 grid points the 1-call student must learn the teacher's 2-step ODE solution from the same noise (Heun to
    t_0, then the step to the clean image): its distance to it falls to a fraction of the initial student's. A
    target that is not the teacher's ODE step (e.g. the student's own x_t) does not get there."""
    from ddpm_hf.distillation.loop import student_noise_scheduler, student_unet

    out = tmp_path / "two"
    _distill(capsys, trained_run, out, "--num_teacher_steps", "2", "--max_train_steps", "150",
             "--learning_rate", "1e-3", "--ema_max_decay", "0.9")
    teacher = DDPMHFPipeline.from_pretrained(trained_run)
    student = DDPMHFPipeline.from_pretrained(out)
    initial = student_unet(teacher.unet, 1).eval()
    scheduler = student_noise_scheduler(teacher.scheduler, "v_prediction")
    z = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    top = torch.full((256,), 19)
    with torch.no_grad():
        middle = teacher_ode_step(teacher.unet, teacher.scheduler, z, top, top - 10)
        solution = teacher_ode_step(teacher.unet, teacher.scheduler, middle, top - 10, top - 20)
        distances = [float((consistency_function(net, scheduler, z, top).clamp(-1, 1) - solution).pow(2).mean())
                     for net in (initial, student.unet.eval())]
    # measured: 0.13 of the initial distance; with the teacher's step replaced by x_t itself 0.27, with the target
    # at t instead of t - k 1.65
    assert distances[1] < 0.18 * distances[0], distances


@pytest.mark.slow
@pytest.mark.parametrize("method", ["consistency", "progressive"])
def test_a_conditional_teacher_gives_a_student_that_takes_its_guidance_scale_as_an_input(tmp_path, capsys, method):
    """The student of a class-conditional teacher takes class labels and a guidance scale from its grid (the default
    grid and the teacher's own default 2.5 here); each class at each scale is one class-embedding id (c M + j),
    initialised from the teacher's class, so it samples a class at a scale in one UNet call per step (no
    unconditional branch); a scale off the grid is refused (consistency: LCMScheduler, progressive: the 2-step DDIM
    student of its last round)."""
    from helpers import run_train

    teacher = tmp_path / "teacher"
    run_train("--class_conditional", "--max_train_steps", "3", "--output_dir", str(teacher), "--checkpointing_steps",
              "100", "--guidance_scale", "2.5", cwd=tmp_path)
    student = tmp_path / "student"
    _distill(capsys, teacher, student, "--max_train_steps", "3", "--method", method,
             *(["--num_student_steps", "2"] if method == "progressive" else []))
    args = json.loads((student / "training_args.json").read_text())
    assert args["class_conditional"] and args["distillation"]["teacher_guidance_scale"] is None
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["teacher_guidance_scale"] == 2.5 and metrics["guidance_scales"] == [1, 1.5, 2, 2.5, 3]
    index = json.loads((student / "model_index.json").read_text())
    assert index["null_class_id"] == 50 and index["guidance_scale"] == 2.5 and index["id2label"]["7"] == "7"
    assert index["guidance_scales"] == [1, 1.5, 2, 2.5, 3]
    pipe = DDPMHFPipeline.from_pretrained(student)
    assert pipe.unet.config.num_class_embeds == 51
    seen = []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append((a[0].shape[0], kw["class_labels"].tolist())),
                                        with_kwargs=True)
    pipe(class_labels=[3, 7], num_inference_steps=2, output_type="np")  # the default, 2.5: j = 3
    assert seen == [(2, [18, 38]), (2, [18, 38])]
    seen.clear()
    pipe(class_labels=[3, 7], num_inference_steps=1, guidance_scale=1.5, output_type="np")
    assert seen == [(2, [16, 36])]
    with pytest.raises(ValueError, match=r"at the scales \[1.0, 1.5, 2.0, 2.5, 3.0\] only"):
        pipe(class_labels=[3], num_inference_steps=1, guidance_scale=1.7)
    with pytest.raises(ValueError, match="out of range: this model's classes are 0..9"):
        pipe(class_labels=[12], num_inference_steps=1)
    seen.clear()
    pipe(batch_size=2, num_inference_steps=1, output_type="np")  # unconditional: the null class, trained too
    assert seen == [(2, [50, 50])]
    for extra, count in ((["--class_labels", "3", "7", "--guidance_scale", "2"], 2), ([], 10)):  # a row per class
        out = tmp_path / f"samples{count}"
        code, _, err = cli_in_process(capsys, "sample", student, "--num_images", "1", "--num_inference_steps", "1",
                                      "--output_dir", out, *extra)
        assert code == 0 and len(list(out.glob("sample_*.png"))) == count, err[-2000:]


def test_the_students_class_embedding_starts_as_the_teachers_class_at_every_scale():
    from diffusers import UNet2DModel

    from ddpm_hf.distillation.loop import student_unet

    teacher = UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 8), layers_per_block=1,
                          down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                          norm_num_groups=4, num_class_embeds=4)  # 3 classes and the null class
    student = student_unet(teacher, 1, guidance_grid=2)
    old, new = teacher.class_embedding.weight, student.class_embedding.weight
    assert new.shape[0] == 7 and torch.equal(new[6], old[3])
    assert all(torch.equal(new[c * 2 + j], old[c]) for c in range(3) for j in range(2))


def test_per_image_guidance_is_each_images_scalar_guidance():
    """The teacher's guided output with one scale per image (the distillation draws one) is, image by image, the
    pipelines' guidance with that scale (Ho & Salimans eq. 6)."""
    from diffusers import UNet2DModel

    from ddpm_hf.pipeline_ddpm_hf_denoiser import denoise

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=4).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 9, 13])
    labels, scales = torch.tensor([0, 2, 1]), torch.tensor([1.0, 2.5, 0.5])
    with torch.no_grad():
        together = denoise(unet, x, t, labels, 3, scales)
        alone = [denoise(unet, x[i:i + 1], t[i:i + 1], labels[i:i + 1], 3, float(scales[i])) for i in range(3)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[1], denoise(unet, x[1:2], t[1:2], labels[1:2], 3, 1.0), atol=1e-3)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(trained_run, tmp_path):
    """A distillation stopped by SIGTERM (a preempted job) writes checkpoint-N of the step it was at, exits 143 and
    prints the command that resumes it, as a training run does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import THREADS

    out = tmp_path / "student"
    process = subprocess.Popen(
        [sys.executable, "-m", "ddpm_hf.cli", "distill", str(trained_run), "--output_dir", str(out), *DISTILL,
         "--max_train_steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, **THREADS))
    history = out / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.is_file() and len(history.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    steps = [json.loads(line)["step"] for line in history.read_text().splitlines()]
    assert (out / f"checkpoint-{steps[-1]}" / "unet_ema" / "config.json").is_file()
    assert f"stopped by SIGTERM: saved {out / f'checkpoint-{steps[-1]}'}" in err
    assert "Resume with: ddpm-hf distill" in err and "--resume_from_checkpoint latest" in err

"""Progressive distillation (ddpm_hf.distillation.progressive, `ddpm-hf distill --method progressive`): the target
and the grids against diffusers' DDIMScheduler (an independent implementation, which samples the student), the
student-teacher's two steps against DDIMScheduler's, rounds, a short run that learns the teacher's map (and fails
with the target broken), resume across a round's end, and the rounds' pipelines."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler
from ddpm_hf.distillation.progressive import (halving_rounds, progressive_target, round_of_step, step_grid,
                                              two_teacher_steps)
from helpers import cli_in_fixture, cli_in_process, read_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)


def _ddim(prediction_type, steps, T=1000):
    scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                              timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 10])
def test_the_grid_is_ddim_schedulers_trailing_grid(steps):
    """t: DDIMScheduler's trailing timesteps of K steps, s = its prev_timestep (t - T // K), the middle point the
    2K-step grid's between them."""
    t, middle, s = step_grid(steps, 1000)
    ddim, double = _ddim("v_prediction", steps), _ddim("v_prediction", 2 * steps)
    assert t.tolist() == ddim.timesteps.tolist()
    assert s.tolist() == (ddim.timesteps - 1000 // steps).tolist() and s[-1] == -1
    assert middle.tolist() == double.timesteps[1::2].tolist() and ((s < middle) & (middle < t)).all()
    with pytest.raises(ValueError, match="multiple of 16"):
        step_grid(16, 1000)


@pytest.mark.parametrize("steps", [4, 2, 1])
def test_the_target_makes_one_ddim_step_land_on_the_teachers_point(steps):
    """Salimans & Ho Algorithm 2: read as a v prediction, the target takes diffusers' DDIMScheduler (v, eta 0) from
    x_t at t to the teacher's x_s in one step, for every t of the grid (s = -1: the clean image)."""
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    ddim = _ddim("v_prediction", steps)
    t, _, s = step_grid(steps, 1000)
    g = torch.Generator().manual_seed(3)
    for i in range(steps):
        x_t, x_s = torch.randn(2, 3, 1, 8, 8, generator=g).unbind(0)
        target = progressive_target(ours, x_t.double(), t[i].repeat(3), x_s.double(), s[i].repeat(3))
        landed = ddim.step(target, int(t[i]), x_t.double(), eta=0.0).prev_sample
        torch.testing.assert_close(landed, x_s.double(), rtol=1e-5, atol=1e-5)  # DDIMScheduler: float32 tables


def test_a_student_teachers_two_steps_are_two_ddim_steps():
    """After the first round the teacher is the previous student: its two steps t -> middle -> s are diffusers'
    DDIMScheduler steps (v, unclipped) of the 2K-step sampler, whatever the network outputs."""
    ours = DDPMHFScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    ddim = _ddim("v_prediction", 8)
    t, middle, s = step_grid(4, 1000)
    weights = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    net = lambda x, t, class_labels=None: SimpleNamespace(sample=2 * x.tanh() + weights * t.view(-1, 1, 1, 1) / 500)  # noqa: E731
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)).double()
    ours_x = two_teacher_steps(net, ours, x, t, middle, s, first_round=False)
    for i in range(4):
        y = x[i:i + 1]
        for timestep in (int(t[i]), int(middle[i])):
            y = ddim.step(net(y, torch.tensor([timestep])).sample, timestep, y, eta=0.0).prev_sample
        torch.testing.assert_close(ours_x[i:i + 1], y, rtol=1e-6, atol=1e-6)


def test_rounds_halve_the_steps_and_share_the_budget():
    assert halving_rounds(16, 1) == [8, 4, 2, 1] and halving_rounds(8, 2) == [4, 2]
    for bad in ((12, 1), (4, 4), (6, 4)):
        with pytest.raises(ValueError, match="halves the steps"):
            halving_rounds(*bad)
    assert [round_of_step(k, 10, 3) for k in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


# ------------------------------------------------------------------------------------ a run


PROGRESSIVE = ["--method", "progressive", "--num_teacher_steps", "4", "--train_batch_size", "16",
               "--num_sample_images", "4", "--logger", "none", "--eval_batch_size", "16"]


def _distill(capsys, teacher, out, *extra):
    code, _, err = cli_in_process(capsys, "distill", str(teacher), "--output_dir", str(out), *PROGRESSIVE, *extra)
    assert code == 0, err[-3000:]


@pytest.fixture(scope="module")
def student(trained_run, tmp_path_factory):
    """A progressive student of the session's tiny run (T = 20): teacher grid 4, rounds of 2 and 1 steps, 3 steps
    each, a checkpoint after every step (1-5)."""
    out = tmp_path_factory.mktemp("progressive") / "student"
    cli_in_fixture("distill", trained_run, "--output_dir", out, *PROGRESSIVE, "--max_train_steps", "6",
                   "--checkpointing_steps", "1", "--checkpoints_total_limit", "6")
    return out


def test_each_round_leaves_a_ddim_pipeline_and_the_last_is_the_student(student):
    args = json.loads((student / "training_args.json").read_text())["distillation"]
    assert args["method"] == "progressive" and args["num_student_steps"] == 1
    for steps in (2, 1):
        folder = student / "rounds" / f"{steps}-step"
        index = json.loads((folder / "model_index.json").read_text())
        assert index["scheduler"] == ["diffusers", "DDIMScheduler"] and index["num_inference_steps"] == steps
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert config["timestep_spacing"] == "trailing" and config["prediction_type"] == "v_prediction"
        assert not config["clip_sample"] and (folder / f"samples-{steps}-step" / "grid.png").is_file()
    final, last = read_weights(student), read_weights(student / "rounds" / "1-step")
    first = read_weights(student / "rounds" / "2-step")
    assert all(torch.equal(final[k], last[k]) for k in final) and not all(torch.equal(final[k], first[k])
                                                                           for k in final)
    pipe = DDPMHFPipeline.from_pretrained(student)
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    pipe(batch_size=2, output_type="np")
    assert len(calls) == 1 and "progressive distillation" in (student / "README.md").read_text()


def test_sample_eta_is_the_pipelines_ddim_eta(student, capsys, tmp_path):
    """`ddpm-hf sample STUDENT --eta 1` writes the images of `pipe(eta=1.0)` with the same generators (image i: seed
    + i), which differ from the deterministic ones; a sampler without eta (euler) is refused with the flag named."""
    import numpy as np
    from PIL import Image

    folder = student / "rounds" / "2-step"
    pipe = DDPMHFPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    expected = {}
    for eta in (0.0, 1.0):
        out = tmp_path / f"eta{eta}"
        code, _, err = cli_in_process(capsys, "sample", str(folder), "--num_images", "3", "--seed", "5", "--eta",
                                      str(eta), "--output_dir", str(out))
        assert code == 0, err[-2000:]
        written = np.stack([np.asarray(Image.open(out / f"sample_{i:04d}.png")) for i in range(3)])
        images = pipe(batch_size=3, eta=eta, output_type="np",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(3)]).images
        assert np.abs(written.astype(int) - (images[..., 0] * 255).round().astype(int)).max() <= 1
        expected[eta] = written
    assert np.abs(expected[0.0].astype(int) - expected[1.0].astype(int)).max() > 10
    code, _, err = cli_in_process(capsys, "sample", str(folder), "--scheduler", "euler", "--eta", "1",
                                  "--output_dir", str(tmp_path / "euler"))
    assert code == 2 and "--eta: the sampler EulerDiscreteScheduler takes no eta" in err


@pytest.mark.parametrize("checkpoint", ["checkpoint-2", "checkpoint-3", "checkpoint-4"])
def test_resume_is_bit_identical_across_a_rounds_end(student, trained_run, tmp_path, capsys, checkpoint):
    """Resumed in round 0 (it crosses the round's end: saves rounds/2-step, which becomes the teacher), at the end of
    round 0 or inside round 1 (their teacher read back from rounds/2-step), the run ends with the weights of the run
    that never stopped."""
    resumed = tmp_path / "resumed"
    shutil.copytree(student / checkpoint, resumed / checkpoint)
    if checkpoint != "checkpoint-2":
        shutil.copytree(student / "rounds" / "2-step", resumed / "rounds" / "2-step")
    _distill(capsys, trained_run, resumed, "--max_train_steps", "6", "--checkpointing_steps", "2",
             "--resume_from_checkpoint", "latest")
    ours, straight = read_weights(resumed), read_weights(student)
    assert ours.keys() == straight.keys() and all(torch.equal(ours[k], straight[k]) for k in ours)


def test_a_later_round_starts_its_student_as_a_copy_of_its_teacher(tmp_path):
    """Salimans & Ho Algorithm 2: at a later round's first step the student's weights become its teacher's (the
    previous round's saved EMA weights); inside a round (a resume) nothing is reset."""
    from diffusers.training_utils import EMAModel

    from ddpm_hf.distillation.objectives import Progressive

    unet = _tiny_unet()
    unet.save_pretrained(tmp_path / "rounds" / "2-step" / "unet")
    config = SimpleNamespace(num_teacher_steps=4, num_student_steps=1, teacher_solver="ddim",
                             student=SimpleNamespace(max_train_steps=6, output_dir=str(tmp_path)))
    scheduler = DDPMHFScheduler(num_train_timesteps=20, prediction_type="v_prediction")
    objective = Progressive(config, SimpleNamespace(unet=unet, scheduler=scheduler), scheduler, None, None, None)
    flat, shadow = torch.zeros(5), torch.arange(5.0)
    ema = EMAModel([torch.nn.Parameter(shadow.clone())])
    for step, expected in ((0, torch.zeros(5)), (4, torch.zeros(5)), (3, shadow)):
        objective.round = None
        objective.start(step, None, flat, ema)
        assert torch.equal(flat, expected), step
    assert objective.round == 1 and objective.grid[0].tolist() == [19]


def test_a_conditional_batch_tells_the_student_the_scale_the_teacher_was_guided_with():
    """Each image's student id is c M + j for the scale j its teacher step is guided with (``guided_class_ids``);
    about a tenth are the null class (teacher unguided, student id K M)."""
    from ddpm_hf.distillation.objectives import NULL_FRACTION, _Objective
    from ddpm_hf.pipeline_ddpm_hf_denoiser import guided_class_ids

    scales = [1.0, 1.5, 2.0, 3.0]
    objective = _Objective(None, None, None, scales, 10, None)
    labels = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0))
    ids, guidance = objective._conditioning(labels, torch.Generator().manual_seed(1))
    null = guidance["class_labels"] == 10
    assert abs(float(null.float().mean()) - NULL_FRACTION) < 0.02 and (ids[null] == 40).all()
    kept = ~null
    assert torch.equal(guidance["class_labels"][kept], labels[kept]) and torch.equal(ids[kept] // 4, labels[kept])
    for j, w in enumerate(scales):
        at = kept & (guidance["guidance_scale"] == w)
        assert at.sum() > 700 and torch.equal(ids[at], guided_class_ids(labels[at], w, scales, 10))


def test_resuming_a_later_round_without_its_teacher_says_what_is_missing(student, trained_run, tmp_path, capsys):
    resumed = tmp_path / "resumed"
    shutil.copytree(student / "checkpoint-4", resumed / "checkpoint-4")
    code, _, err = cli_in_process(capsys, "distill", str(trained_run), "--output_dir", str(resumed), *PROGRESSIVE,
                                  "--max_train_steps", "6", "--resume_from_checkpoint", "latest")
    assert code == 2 and "rounds/2-step" in err and "the previous round's student" in err


@pytest.mark.slow
def test_progressive_distillation_learns_the_teachers_map(trained_run, tmp_path, capsys):
    """Two rounds (teacher grid 4 -> students of 2 and 1 steps) must bring the 1-step student's sample close to the
    teacher's 4-step DPM-Solver++(2S) solution from the same noise: its distance falls to a fraction of the initial
    student's (the teacher's weights read as v). A target that is not the teacher's two steps does not get there."""
    from ddpm_hf.distillation.consistency import teacher_ode_step
    from ddpm_hf.distillation.loop import student_unet

    out = tmp_path / "pd"
    _distill(capsys, trained_run, out, "--max_train_steps", "160", "--learning_rate", "1e-3")
    teacher = DDPMHFPipeline.from_pretrained(trained_run)
    student = DDPMHFPipeline.from_pretrained(out)
    initial = student_unet(teacher.unet, 1).eval()
    z = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        solution = z
        for t, s in ((19, 14), (14, 9), (9, 4), (4, -1)):
            solution = teacher_ode_step(teacher.unet, teacher.scheduler, solution, torch.full((256,), t),
                                        torch.full((256,), s))
        ddim = student.scheduler  # diffusers' DDIMScheduler, as the student's pipeline samples
        ddim.set_timesteps(1)
        t = int(ddim.timesteps[0])
        distances = [float((ddim.step(unet(z, t).sample, t, z).prev_sample.clamp(-1, 1) - solution.clamp(-1, 1))
                           .pow(2).mean()) for unet in (initial, student.unet.eval())]
    # measured: 0.12 of the initial distance; with the teacher's steps replaced by x_t itself 0.23, with the
    # teacher's second step going nowhere (the target at the middle point) 0.17
    assert distances[1] < 0.145 * distances[0], distances


def test_the_default_first_teacher_fits_the_teachers_schedule():
    """16 steps (students of 8, 4, 2, 1) for T = 1000; halved until every student's steps divide T (T = 20: 8, whose
    students 4, 2, 1 do); consistency's grid of 10 points is capped at T."""
    from ddpm_hf.distillation.config import default_teacher_steps

    assert default_teacher_steps("progressive", 1000) == 16 and default_teacher_steps("progressive", 20) == 8
    assert default_teacher_steps("progressive", 1024, 4) == 64 and default_teacher_steps("progressive", 1000, 4) == 16
    assert default_teacher_steps("progressive", 3) == 2
    assert default_teacher_steps("consistency", 1000) == 10 and default_teacher_steps("consistency", 6) == 6

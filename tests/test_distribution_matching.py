"""Distribution matching (ddpm_hf.distillation.distribution_matching, `ddpm-hf distill --method
distribution_matching`): on Gaussian data, where every score is closed-form, the DMD gradient with a fake model
trained by the fake-score loss moves a generator's mean and spread to the teacher's (and away with the gradient's
sign flipped); the student's sampler it trains is diffusers' DDIMScheduler's; a real refinement run of a progressive
student: its pipeline, its records, and resume bit-identical (the fake model's state included)."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler

from ddpm_hf import DDPMHFPipeline, DDPMHFScheduler
from ddpm_hf.distillation import distribution_matching as dm
from ddpm_hf.distillation.progressive import step_grid
from helpers import cli_in_fixture, cli_in_process, read_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = 1000


class GaussianEps(torch.nn.Module):
    """The exact epsilon prediction for data x0 ~ N(mu, s^2 I): E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) /
    (ab s^2 + 1 - ab) (Ho eq. 4 with Gaussian conditioning), a "UNet" with learnable mu and log s."""

    def __init__(self, alphas_cumprod, mu, s):
        super().__init__()
        self.ab = alphas_cumprod.float()
        self.mu = torch.nn.Parameter(torch.tensor(float(mu)))
        self.log_s = torch.nn.Parameter(torch.tensor(float(s)).log())

    def forward(self, x_t, t):
        ab = self.ab[t].view(-1, *([1] * (x_t.ndim - 1)))
        var = ab * self.log_s.exp() ** 2 + 1 - ab
        return SimpleNamespace(sample=(1 - ab).sqrt() * (x_t - ab.sqrt() * self.mu) / var)


def _match(sign=1.0, steps=300):
    """A generator x = a + b z trained by the DMD gradient towards the teacher N(-0.5, 0.5^2), with a fake model of
    the GaussianEps form fitted to its samples by ``fake_score_loss`` (5 updates per step); returns (a, b)."""
    scheduler = DDPMHFScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    ab = torch.as_tensor(scheduler.alphas_cumprod)
    real = GaussianEps(ab, -0.5, 0.5).requires_grad_(False)
    fake = GaussianEps(ab, 1.0, 0.3)
    a, log_b = torch.nn.Parameter(torch.tensor(1.0)), torch.nn.Parameter(torch.tensor(0.3).log())
    opt_g = torch.optim.Adam([a, log_b], lr=0.02, betas=(0.0, 0.999))
    opt_f = torch.optim.Adam(fake.parameters(), lr=0.05, betas=(0.0, 0.999))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = a + log_b.exp() * torch.randn(256, 1, 2, 2, generator=g)
        for _ in range(5):
            t = torch.randint(0, T, (256,), generator=g)
            loss = dm.fake_score_loss(fake, scheduler, x, t, torch.randn(x.shape, generator=g))
            opt_f.zero_grad()
            loss.backward()
            opt_f.step()
        t = torch.randint(20, 981, (256,), generator=g)
        with torch.no_grad():
            x_t = scheduler.q_sample(x.detach(), torch.randn(x.shape, generator=g), t)
            gradient = dm.distribution_matching_gradient(x.detach(), dm.x0_prediction(real, scheduler, x_t, t),
                                                         dm.x0_prediction(fake, scheduler, x_t, t))
        opt_g.zero_grad()
        dm.distribution_matching_loss(x, sign * gradient).backward()
        opt_g.step()
    return float(a.detach()), float(log_b.detach().exp())


def test_the_gradient_moves_a_generator_to_the_teachers_distribution():
    """From N(1, 0.3^2) to the teacher's N(-0.5, 0.5^2): mean and spread both (the spread only through the scores'
    x_t dependence); with the gradient's sign flipped the generator moves away."""
    a, b = _match()
    assert abs(a + 0.5) < 0.05 and abs(b - 0.5) < 0.05, (a, b)
    a, b = _match(sign=-1.0, steps=100)
    assert a > 1.5, (a, b)


def test_the_fake_score_loss_fits_the_samples_distribution():
    """The fake model's DDPM loss alone, on samples of N(0.7, 0.2^2), finds mu and s (its minimiser is the exact
    score of the samples' distribution)."""
    scheduler = DDPMHFScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    fake = GaussianEps(torch.as_tensor(scheduler.alphas_cumprod), 0.0, 1.0)
    opt = torch.optim.Adam(fake.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        x = 0.7 + 0.2 * torch.randn(256, 1, 2, 2, generator=g)
        t = torch.randint(0, T, (256,), generator=g)
        loss = dm.fake_score_loss(fake, scheduler, x, t, torch.randn(x.shape, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(fake.mu) - 0.7) < 0.03 and abs(float(fake.log_s.exp()) - 0.2) < 0.03


def test_the_gradient_is_zero_where_the_two_models_agree_and_normalised_per_image():
    x = torch.randn(3, 1, 4, 4)
    real = x + 0.5 * torch.randn(3, 1, 4, 4)
    assert torch.equal(dm.distribution_matching_gradient(x, real, real), torch.zeros_like(x))
    fake = real + 1.0
    gradient = dm.distribution_matching_gradient(x, real, fake)
    expected = 1.0 / (x - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(gradient, expected.expand_as(x))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_student_sampler_is_diffusers_ddim_schedulers(steps):
    """``student_sample`` (what the DMD gradient flows through) against diffusers' DDIMScheduler, trailing, v
    prediction, unclipped: the sampler of the progressive student's pipeline."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    ours = DDPMHFScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    ddim = DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                         timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(steps)
    z = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        x = z
        for t in ddim.timesteps:
            x = ddim.step(unet(x, t).sample, t, x).prev_sample
        got = dm.student_sample(unet, ours, z, step_grid(steps, T))
    assert torch.allclose(got, x, atol=1e-5), (got - x).abs().max()


# ------------------------------------------------------------------------------------ a real run

PROGRESSIVE = ["--method", "progressive", "--num_teacher_steps", "4", "--train_batch_size", "16",
               "--num_sample_images", "4", "--logger", "none", "--eval_batch_size", "16", "--max_train_steps", "2"]
MATCHING = ["--method", "distribution_matching", "--train_batch_size", "16", "--num_sample_images", "4",
            "--logger", "none", "--eval_batch_size", "16", "--max_train_steps", "4", "--fake_updates", "2"]


@pytest.fixture(scope="module")
def refined(trained_run, tmp_path_factory):
    """A progressive student of the session's tiny run (T = 20; rounds of 2 and 1 steps) and its 2-step student
    refined by distribution matching for 4 steps, a checkpoint after each."""
    root = tmp_path_factory.mktemp("matching")
    cli_in_fixture("distill", trained_run, "--output_dir", root / "progressive", *PROGRESSIVE)
    init = root / "progressive" / "rounds" / "2-step"
    cli_in_fixture("distill", trained_run, "--output_dir", root / "refined", "--init_student", init, *MATCHING,
                   "--checkpointing_steps", "1", "--checkpoints_total_limit", "4")
    return SimpleNamespace(init=init, out=root / "refined")


def test_the_refined_student_keeps_its_sampler_and_records_the_fake_model(refined):
    out = refined.out
    args = json.loads((out / "training_args.json").read_text())["distillation"]
    assert args["method"] == "distribution_matching" and args["num_student_steps"] == 2
    assert args["init_student"] == str(refined.init) and args["fake_updates"] == 2
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"] and index["num_inference_steps"] == 2
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4] and all(h["fake_loss"] > 0 for h in history)
    before, after = read_weights(refined.init), read_weights(out)
    assert before.keys() == after.keys() and not all(torch.equal(before[k], after[k]) for k in before)
    pipe = DDPMHFPipeline.from_pretrained(out)
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    pipe(batch_size=2, output_type="np")
    assert len(calls) == 2 and (out / "samples-2-step" / "grid.png").is_file()
    card = (out / "README.md").read_text()
    assert "distribution matching" in card and "student refined: `progressive/rounds/2-step`" in card
    assert str(refined.init.parent) not in card  # no machine path
    progressive = json.loads((refined.init.parent.parent / "metrics.json").read_text())["distill_seconds"]
    assert f"s of distribution matching, after {progressive:,.0f} s of the progressive run it refines" in card


@pytest.mark.parametrize("checkpoint", ["checkpoint-1", "checkpoint-3"])
def test_resume_is_bit_identical_with_the_fake_models_state(refined, trained_run, tmp_path, capsys, checkpoint):
    """Resumed from a checkpoint, the run ends with the weights of the run that never stopped: the fake model and
    its optimizer come back from the checkpoint (started again from the teacher, the student's gradients differ)."""
    resumed = tmp_path / "resumed"
    shutil.copytree(refined.out / checkpoint, resumed / checkpoint)
    code, _, err = cli_in_process(capsys, "distill", str(trained_run), "--output_dir", str(resumed), "--init_student",
                                  str(refined.init), *MATCHING, "--resume_from_checkpoint", "latest")
    assert code == 0, err[-3000:]
    ours, straight = read_weights(resumed), read_weights(refined.out)
    assert all(torch.equal(ours[k], straight[k]) for k in ours)


# ------------------------------------------------------------------ one command: progressive, then the refinement

ONE_COMMAND = [a for a in MATCHING if a not in ("--method", "distribution_matching")] + [
    "--num_teacher_steps", "4", "--num_student_steps", "2", "--progressive_round_steps", "1"]


@pytest.fixture(scope="module")
def one_command(trained_run, tmp_path_factory):
    """``ddpm-hf distill TEACHER`` with the default method (distribution matching, no --init_student): progressive
    distillation 4 -> 2 steps (one round of one step) in progressive/, then 4 refinement steps."""
    out = tmp_path_factory.mktemp("one") / "student"
    cli_in_fixture("distill", trained_run, "--output_dir", out, *ONE_COMMAND, "--checkpointing_steps", "1",
                   "--checkpoints_total_limit", "4")
    return out


def test_one_command_equals_progressive_then_distribution_matching(one_command, refined):
    """The default command's two phases give, bit for bit, the students of the two commands it replaces: its
    progressive phase the separate run's 2-step round (the same first round: the same seed and batches), its
    refinement the separate refinement of that student."""
    first = one_command / "progressive"
    assert json.loads((first / "model_index.json").read_text())["num_inference_steps"] == 2
    ours, theirs = read_weights(first), read_weights(refined.init)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    ours, theirs = read_weights(one_command), read_weights(refined.out)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    args = json.loads((one_command / "training_args.json").read_text())["distillation"]
    assert args["method"] == "distribution_matching" and args["progressive_phase"] is True
    card = (one_command / "README.md").read_text()
    seconds = json.loads((first / "metrics.json").read_text())["distill_seconds"]
    assert f"after {seconds:,.0f} s of the progressive run it refines" in card
    assert "the student refined: `progressive/`, this run's first phase of progressive distillation" in card
    assert str(one_command.parent) not in card  # no machine path


def test_one_command_resumes_in_its_second_phase_without_running_the_first_again(one_command, trained_run, tmp_path,
                                                                                 capsys):
    """Stopped after the progressive phase (its folder complete, the refinement at checkpoint-2), the same command
    with --resume_from_checkpoint latest leaves the first phase's files untouched and ends at the weights of the
    run that never stopped."""
    resumed = tmp_path / "student"
    shutil.copytree(one_command / "progressive", resumed / "progressive")
    shutil.copytree(one_command / "checkpoint-2", resumed / "checkpoint-2")
    before = {p.name: p.stat().st_mtime_ns for p in (resumed / "progressive").iterdir()}
    code, _, err = cli_in_process(capsys, "distill", str(trained_run), "--output_dir", str(resumed), *ONE_COMMAND,
                                  "--resume_from_checkpoint", "latest")
    assert code == 0, err[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (resumed / "progressive").iterdir()} == before
    ours, straight = read_weights(resumed), read_weights(one_command)
    assert all(torch.equal(ours[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_one_command_stopped_in_its_first_phase_resumes_there(trained_run, tmp_path, capsys):
    """Stopped inside the progressive phase (rounds of 2 steps: only its checkpoint-1 saved), the resumed command
    finishes that phase, then runs the refinement: the same student as the run that never stopped. Without
    --resume_from_checkpoint or --overwrite_output_dir the folder is refused before anything runs; with
    --overwrite_output_dir both phases run again, to the same weights."""
    flags = [*ONE_COMMAND[:-1], "2", "--checkpointing_steps", "1"]  # --progressive_round_steps 2
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli_in_process(capsys, "distill", str(trained_run), "--output_dir", str(straight), *flags)[0] == 0
    reference = read_weights(straight)
    shutil.copytree(straight / "progressive" / "checkpoint-1", resumed / "progressive" / "checkpoint-1")
    files = sorted(resumed.rglob("*"))
    code, _, err = cli_in_process(capsys, "distill", str(trained_run), "--output_dir", str(resumed), *flags)
    assert code == 2 and "already holds a distillation run (progressive): add --resume_from_checkpoint" in err
    assert sorted(resumed.rglob("*")) == files  # refused before anything was written
    code, _, err = cli_in_process(capsys, "distill", str(trained_run), "--output_dir", str(resumed), *flags,
                                  "--resume_from_checkpoint", "latest")
    assert code == 0, err[-3000:]
    ours = read_weights(resumed)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    stamp = (resumed / "progressive" / "metrics.json").stat().st_mtime_ns
    code, _, err = cli_in_process(capsys, "distill", str(trained_run), "--output_dir", str(resumed), *flags,
                                  "--overwrite_output_dir")
    assert code == 0, err[-3000:]
    assert (resumed / "progressive" / "metrics.json").stat().st_mtime_ns != stamp
    ours = read_weights(resumed)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_one_command_with_two_processes(trained_run, tmp_path):
    """torchrun with 2 processes: both phases run in one launch (the first keeps the process group for the second),
    every rank's student, and in the refinement its fake model, the same at the end (DDP)."""
    import subprocess
    import sys

    from helpers import launch_lock, train_env

    out = tmp_path / "student"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "ddpm_hf.cli", "distill", str(trained_run), "--output_dir", str(out), *ONE_COMMAND]
    with launch_lock():
        r = subprocess.run(cmd, env=dict(train_env(), PYTHONFAULTHANDLER="1"), capture_output=True, text=True,
                           timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for folder in (out / "progressive", out):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["processes"] == 2 and metrics["weights_identical_across_ranks"] is True, folder
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4] and all(h["fake_loss"] > 0 for h in history)

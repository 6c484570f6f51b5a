"""Faults during training (issue 12): SIGKILL at any moment, SIGTERM/SIGINT, a full disk, damaged checkpoints, a NaN
loss and two runs on one --output_dir. Real processes (forked from a server that imported the package, helpers.ForkedTrain, except
where a launcher is under test) and real files; every resume must end bit-identical to a run
that never stopped.

The kills are placed by watching the run's own files, no test hook: a step (a new line in history.jsonl), a
checkpoint write (checkpoint-N.tmp exists, polled every 0.5 ms; the write takes 50-80 ms here, and the kill must
leave the folder behind, unpublished) and the final held-out evaluation (the last step is in history.jsonl, the
pipeline is not yet written; 96 held-out images make it last about a second).
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY, TRAIN, ForkedTrain, made_once, read_history, read_weights, run_train, train_env

from ddpm_hf.run_dir import LOCK_NAME, checkpoint_dirs, resolve_checkpoint  # noqa: E402

COMMON = ["--max_train_steps", "10", "--checkpointing_steps", "2", "--eval_max_images", "96"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one must equal (checkpoint-6 and -8 kept, the pipeline at step 10),
    trained once per session (``made_once``)."""
    root = made_once(tmp_path_factory, "straight",
                     lambda root: run_train("--output_dir", str(root / "run"), *COMMON, cwd=root))
    return root / "run"


def _start(out, *extra):
    """The tiny run into ``out`` (forked: helpers.ForkedTrain), its stdout and stderr appended to ``out``.log."""
    return ForkedTrain(["--output_dir", str(out), *COMMON, *extra], out.parent, stdout=out.parent / f"{out.name}.log")


def _wait(proc, condition, timeout=180, poll=0.002):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before the moment to interrupt it"
        assert time.time() < deadline, "timed out"
        time.sleep(poll)


def _steps(out):
    try:
        with open(out / "history.jsonl") as f:
            return [int(line.split('"step": ')[1].split(",")[0]) for line in f if line.strip()]
    except (OSError, IndexError):
        return []


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _same_weights(a, b):
    wa, wb = read_weights(a), read_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_killed_three_times_and_stopped_twice_then_resume_is_bit_identical(tmp_path, straight, offline, capsys):
    """One run interrupted five times, each time resumed with `latest`: SIGKILL during a step, during a checkpoint
    write, then SIGTERM (preemption), SIGINT (Ctrl-C) and SIGKILL during the final evaluation (each after a resume). Every SIGKILL leaves the last complete checkpoint as `latest` (a half-written checkpoint-N.tmp is never
    picked) and a stale lock that does not block the resume; SIGTERM and SIGINT write checkpoint-N at the step they
    stopped at (odd steps too), print the resume command and exit 128 + signal. The final weights and every step's
    loss equal the uninterrupted run's. While the first run is alive, a second run on its --output_dir is refused by
    the lock."""
    out = tmp_path / "run"
    plan = [("step", 3, 2), ("write", 4, 2), (signal.SIGTERM, 3, None), (signal.SIGINT, 7, None), ("eval", 10, 8)]
    for i, (phase, at, expect_latest) in enumerate(plan):
        latest = resolve_checkpoint("latest", str(out)) if i else None
        resume_step = int(latest.rsplit("-", 1)[1]) if latest else 0
        proc = _start(out, *(["--resume_from_checkpoint", "latest"] if i else []))
        # the history of the run before still lists its later steps until this run trims it to its checkpoint
        _wait(proc, lambda: max(_steps(out), default=0) <= resume_step)
        if i == 0:  # a second run on the same folder while this one runs (paused meanwhile): refused
            _wait(proc, lambda: (out / LOCK_NAME).exists() and (out / LOCK_NAME).stat().st_size > 0)
            proc.send_signal(signal.SIGSTOP)
            code, err = _run_in_process(capsys, "--output_dir", str(out), *COMMON, "--resume_from_checkpoint",
                                        "latest")
            proc.send_signal(signal.SIGCONT)
            assert code == 2 and "Traceback" not in err, err[-2000:]
            assert f"in use by another training run (pid {proc.pid} on {socket.gethostname()}" in err
        if phase == "write":
            _wait(proc, lambda: (out / f"checkpoint-{at}.tmp").exists(), poll=0.0005)
        else:  # step `at` is recorded: step at + 1 is running (no checkpoint at odd steps), or, after the last
            _wait(proc, lambda: at in _steps(out))  # step, the held-out bits/dim of 96 images (about a second)
        if phase == "eval":
            time.sleep(0.3)
        if isinstance(phase, signal.Signals):
            proc.send_signal(phase)
            assert proc.wait(timeout=120) == 128 + phase
            log = (tmp_path / "run.log").read_text()
            stopped = _steps(out)[-1]
            assert stopped >= at and f"stopped by {phase.name}: saved {out / f'checkpoint-{stopped}'}" in log
            command = [line for line in log.splitlines() if "Resume with: " in line][-1].split("Resume with: ")[1]
            assert command.startswith("ddpm-hf train ") and f"--output_dir {out}" in command
            assert command.endswith("--resume_from_checkpoint latest")
            assert command.count("--resume_from_checkpoint") == 1 and "Traceback" not in log
            assert not (out / LOCK_NAME).exists()  # released on the way out
            expect_latest = stopped
        else:
            _kill(proc)
            assert (out / LOCK_NAME).exists()  # the killed run's lock, now stale
        if phase == "write":  # the kill landed inside the write: the folder is there, unpublished
            assert (out / f"checkpoint-{at}.tmp").exists() and not (out / f"checkpoint-{at}").exists()
        assert not (out / "model_index.json").exists() and not (out / "metrics.json").exists()
        assert resolve_checkpoint("latest", str(out)) == str(out / f"checkpoint-{expect_latest}")
    r = run_train("--output_dir", str(out), *COMMON, "--resume_from_checkpoint", "latest", cwd=tmp_path)
    assert "checkpoint-8 at step 8" in r.stdout + r.stderr
    assert _same_weights(straight, out)
    assert [h["loss"] for h in read_history(out)] == [h["loss"] for h in read_history(straight)]
    assert not list(out.glob("*.tmp")) and not (out / LOCK_NAME).exists()


def test_sigterm_during_the_end_of_run_bound_stops_it_at_once(tmp_path):
    """A SIGTERM while the end-of-run held-out bound runs (here 4,000 terms for each of 23 batches, minutes of work)
    stops the bound at its next term: the run checkpoints its last step, prints the resume command and exits 143
    within seconds, writing neither metrics.json nor the pipeline. Before, the flag was read only after the bound
    (33 minutes at 28x28), so a preemption's grace period ran out first."""
    out = tmp_path / "run"
    proc = ForkedTrain(["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "100",
                        "--ddpm_num_steps", "4000", "--eval_max_images", "180", "--eval_batch_size", "8"],
                       tmp_path, stdout=tmp_path / "run.log")
    _wait(proc, lambda: 2 in _steps(out))
    time.sleep(1.0)  # inside the bound (history.jsonl's last line is written right before it starts)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    signalled = time.time()
    proc.wait(timeout=60)
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert time.time() - signalled < 60
    assert f"stopped by SIGTERM: saved {out / 'checkpoint-2'}" in log, log[-3000:]
    assert checkpoint_dirs(str(out)) == ["checkpoint-2"]
    assert not (out / "metrics.json").exists() and not (out / "model_index.json").exists()


def _copy_with(straight, dst, keep):
    """A copy of the straight run with only checkpoint-`keep` (as if it had stopped after it)."""
    shutil.copytree(straight, dst)
    for name in checkpoint_dirs(str(dst)):
        if name != f"checkpoint-{keep}":
            shutil.rmtree(dst / name)
    return dst


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("what", ["checkpoint", "pipeline"])
def test_disk_full(tmp_path, straight, what):
    """A write fails with EFBIG (RLIMIT_FSIZE of 2 MB in the child, below the 6.4 MB weights): while writing
    checkpoint-8 (resumed from checkpoint-6), or the final pipeline (resumed from checkpoint-8, no checkpoint left to
    write). The error names the file and the checkpoint to resume from; the previous checkpoint is intact and is
    still `latest`; no .tmp folder is left; the pipeline saved before is untouched."""
    keep = 6 if what == "checkpoint" else 8
    out = _copy_with(straight, tmp_path / "run", keep)
    before = _files(out / f"checkpoint-{keep}")
    pipeline_before = {k: v for k, v in _files(out).items() if k.startswith(("unet/", "scheduler/", "model_index"))}
    proc = ForkedTrain(["--output_dir", str(out), *COMMON, "--resume_from_checkpoint", "latest"], tmp_path,
                       stdout=tmp_path / "stdout.txt", stderr=tmp_path / "stderr.txt", file_size_limit=2 << 20)
    code, stderr = proc.wait(300), proc.output()[1]
    assert code == 2 and "Traceback" not in stderr, stderr[-3000:]
    err = [line for line in stderr.splitlines() if "error: " in line][-1]
    if what == "checkpoint":
        assert f"could not write checkpoint-8: {out / 'checkpoint-8.tmp' / 'unet'}" in err
    else:
        assert f"could not write the pipeline: {out / '.pipeline.tmp' / 'unet'}" in err
    assert "the disk is full or a size limit was reached" in err and "File too large" in err
    assert f"The last complete checkpoint is {out / f'checkpoint-{keep}'}" in err
    assert checkpoint_dirs(str(out)) == [f"checkpoint-{keep}"]
    assert resolve_checkpoint("latest", str(out)) == str(out / f"checkpoint-{keep}")
    assert _files(out / f"checkpoint-{keep}") == before
    assert not list(out.glob("*.tmp")) and not (out / LOCK_NAME).exists()
    assert {k: v for k, v in _files(out).items() if k in pipeline_before} == pipeline_before


def _run_in_process(capsys, *argv):
    """`ddpm-hf train` in this process (no import cost): its exit code and stderr."""
    from accelerate.state import AcceleratorState

    from ddpm_hf.cli.train import main

    try:
        main([*TINY, *argv])
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        AcceleratorState._reset_state(True)
    return code, capsys.readouterr().err


@pytest.fixture
def offline(monkeypatch):
    for key, value in train_env().items():
        if key in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TQDM_DISABLE"):
            monkeypatch.setenv(key, value)


def _malicious_pickle(path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    path.write_bytes(pickle.dumps({"random_state": Boom()}))


DAMAGE = {  # how a checkpoint is damaged, and the file the error must name
    "truncated unet": (lambda c: _truncate(c / "unet" / "diffusion_pytorch_model.safetensors"),
                       "unet/diffusion_pytorch_model.safetensors cannot be read"),
    "missing unet_ema": (lambda c: (c / "unet_ema" / "diffusion_pytorch_model.safetensors").unlink(),
                         "unet_ema/diffusion_pytorch_model.safetensors is missing"),
    "missing optimizer": (lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.bin"), "optimizer.bin cannot be read"),
    "garbage random states": (lambda c: (c / "random_states_0.pkl").write_bytes(b"not a pickle"),
                              "random_states_0.pkl cannot be read"),
    "malicious random states": (lambda c: _malicious_pickle(c / "random_states_0.pkl"),
                                "random_states_0.pkl cannot be read"),
    "missing random states": (lambda c: (c / "random_states_0.pkl").unlink(), "random_states_0.pkl is missing"),
    "wrong step": (lambda c: (c / "training_state.json").write_text('{"step": 2, "images_seen": 0, "elapsed": 0}'),
                   "training_state.json says step 2, not 8"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def finished(straight, tmp_path_factory):
    """The straight run's folder with checkpoint-8 only, copied once (each case copies that copy's checkpoint)."""
    return _copy_with(straight, tmp_path_factory.mktemp("finished") / "run", 8)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_stops_the_resume(tmp_path, finished, offline, capsys, monkeypatch, damage):
    """A damaged latest checkpoint: the resume names the file and stops with exit 2 before loading anything (it
    neither starts fresh nor resumes from another step, and a malicious pickle runs no code); the folder is left as
    it was."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    make_damage, expected = DAMAGE[damage]
    make_damage(out / "checkpoint-8")
    before = _files(out)
    code, err = _run_in_process(capsys, "--output_dir", str(out), *COMMON, "--resume_from_checkpoint", "latest")
    assert code == 2 and "Traceback" not in err
    assert f"checkpoint {out / 'checkpoint-8'} is damaged: {out / 'checkpoint-8'}{os.sep}" in err
    assert expected.replace("/", os.sep) in err and "--resume_from_checkpoint checkpoint-N" in err
    assert _files(out) == before and not (tmp_path / "pwned.txt").exists()


@pytest.mark.slow
def test_nan_loss_stops_before_it_reaches_the_weights(tmp_path, offline, capsys, monkeypatch):
    """--learning_rate 1e30 (a real flag, no hook): Adam moves every weight by about 1e30 in the first step and the
    loss overflows within a few steps. The run stops at that step naming the loss and the last good checkpoint,
    writes no checkpoint and no pipeline after it, and the checkpoints before it hold finite weights."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, err = _run_in_process(capsys, "--output_dir", str(out), "--max_train_steps", "10", "--checkpointing_steps",
                                "1", "--learning_rate", "1e30", "--lr_warmup_steps", "0")
    assert code == 2 and "Traceback" not in err
    line = [line for line in err.splitlines() if "error: " in line][-1]
    bad = int(line.split("error: step ")[1].split(":")[0])
    assert 1 < bad < 10 and re.search(r"(the loss is|gradient norm) (nan|inf)", line), line
    assert f"nothing was saved after step {bad - 1}" in line
    assert f"The last good checkpoint is {out / f'checkpoint-{bad - 1}'}" in line and "--learning_rate" in line
    assert checkpoint_dirs(str(out))[-1] == f"checkpoint-{bad - 1}"
    assert _steps(out)[-1] == bad - 1 and not (out / "model_index.json").exists()
    from safetensors.torch import load_file

    weights = load_file(out / f"checkpoint-{bad - 1}" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.slow
def test_lock_of_a_live_run_refuses_and_a_dead_ones_does_not(tmp_path, offline, capsys, monkeypatch):
    """A lock held by a live process (this one's parent) refuses with the owner named and leaves the folder as it
    was; a lock left by a process that is gone is taken over."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    host = socket.gethostname()
    (out / LOCK_NAME).write_text(f'{{"host": "{host}", "pid": {os.getppid()}}}')
    code, err = _run_in_process(capsys, "--output_dir", str(out), "--max_train_steps", "1", "--eval_split", "")
    assert code == 2 and "Traceback" not in err
    assert f"is in use by another training run (pid {os.getppid()} on {host}; lock file {out / LOCK_NAME})" in err
    assert os.listdir(out) == [LOCK_NAME]
    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / LOCK_NAME).write_text(f'{{"host": "{host}", "pid": {gone.pid}}}')
    code, err = _run_in_process(capsys, "--output_dir", str(out), "--max_train_steps", "1", "--eval_split", "")
    assert code is None or code == 0, err[-2000:]
    assert (out / "model_index.json").exists() and not (out / LOCK_NAME).exists()


# (the lock is never pushed: test_hub_faults.test_push_uploads_weights_through_lfs_and_a_second_push_updates)


# --------------------------------------------------------------------------------------- preemption, every launcher
BIN = os.path.dirname(sys.executable)
LAUNCHERS = {  # the launch commands README shows, as real processes
    "ddpm-hf train": [os.path.join(BIN, "ddpm-hf"), "train"],
    "accelerate launch": [os.path.join(BIN, "accelerate"), "launch", "--num_processes", "1", TRAIN],
    # on a free port: accelerate's default, 29500, is one port for every launch (two at once, as `make test`'s two
    # pytest-xdist workers may start, would collide); torchrun --standalone picks a free one itself
    "accelerate launch 2 processes": [os.path.join(BIN, "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                                      "--main_process_port", "0", TRAIN],
    "torchrun 2 processes": [os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "2", TRAIN],
}
SLOW_LAUNCHERS = ("accelerate launch 2 processes", "torchrun 2 processes")


def _session_processes(sid):
    """The pids of the live processes of session ``sid`` (a launcher and the workers it started, orphans too)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("target", ["top process", "process group"])
@pytest.mark.parametrize("launcher", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_LAUNCHERS else name
                                      for name in LAUNCHERS])
def test_preemption_under_every_launcher(tmp_path, launcher, target):
    """SIGTERM to the launcher alone (Kubernetes signals PID 1) or to its whole process group (SLURM), during a long
    run: every process of the launch ends within a minute, and the last step any process recorded is a published
    checkpoint (written after the signal; no periodic checkpoint is due). Before the parent-death signal,
    accelerate's one-process launcher died at once and left its worker training unseen, without a checkpoint. `ddpm-hf
    train` and torch elastic's agent (torchrun, accelerate launch with 2 processes) return only after the checkpoint
    is published; accelerate's one-process launcher exits at once (its worker publishes it a moment later)."""
    out = tmp_path / "run"
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([*LAUNCHERS[launcher], *TINY, "--output_dir", str(out), "--max_train_steps", "100000",
                             "--checkpointing_steps", "100000", "--eval_split", ""], cwd=tmp_path, env=train_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(proc, lambda: len(_steps(out)) >= 2, timeout=240, poll=0.05)
        if target == "top process":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
        published_when_launcher_ended = bool(checkpoint_dirs(str(out)))
        deadline = time.time() + 60
        while _session_processes(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _session_processes(proc.pid), f"still running after its launcher ended (code {code})"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # this launch's own processes, if the test failed
        log.close()
    text = (tmp_path / "run.log").read_text(errors="replace")
    last = _steps(out)[-1]
    assert checkpoint_dirs(str(out)) == [f"checkpoint-{last}"], text[-3000:]
    assert not list(out.glob("*.tmp")) and not (out / LOCK_NAME).exists(), text[-3000:]
    assert f"stopped by SIGTERM: saved {out / f'checkpoint-{last}'}" in text, text[-3000:]
    if launcher == "ddpm-hf train":
        assert code == 128 + signal.SIGTERM
    if launcher != "accelerate launch":  # these wait for their workers; accelerate's one-process launcher cannot
        assert published_when_launcher_ended

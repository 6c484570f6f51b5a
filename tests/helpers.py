"""Plain helpers shared by the test files (fixtures live in conftest.py): tiny UNets, tiny training runs as a user
starts them, the CLI in a subprocess, reading what a run wrote, image folders, and fresh Python subprocesses that load pipelines with or without ddpm_hf
(see test_save_load.py's docstring for what "without ddpm_hf" means)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
from filelock import FileLock
from safetensors.torch import load_file

import ddpm_hf
from hub_server import CLIENT_PRELUDE

# ------------------------------------------------------------------------------------------------ tiny UNets


def _unet_classes():
    import torch
    from diffusers import UNet2DModel

    class RecordingUNet(UNet2DModel):
        """A UNet2DModel that records (input, timestep, class labels, output) of every call in ``calls`` (the real
        network runs)."""

        def forward(self, sample, timestep, class_labels=None, return_dict=True):
            out = super().forward(sample, timestep, class_labels=class_labels, return_dict=return_dict)
            labels = None if class_labels is None else torch.as_tensor(class_labels).tolist()
            self.calls.append((sample.clone(), timestep, labels, (out.sample if return_dict else out[0]).clone()))
            return out

    return UNet2DModel, RecordingUNet


UNet2DModel, RecordingUNet = _unet_classes()


def tiny_unet(channels=1, learned=False, num_class_embeds=None, cls=UNet2DModel, seed=0, norm_num_groups=4):
    """An 8x8 two-level UNet2DModel (8 and 16 channels, one layer per block) in eval mode, initialised from ``seed``:
    ``channels`` in, twice as many out for ``learned`` variances, ``num_class_embeds`` for a class-conditional one;
    ``cls`` RecordingUNet to record its calls (``unet.calls``, empty)."""
    import torch

    torch.manual_seed(seed)
    unet = cls(sample_size=8, in_channels=channels, out_channels=channels * (2 if learned else 1),
               block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=norm_num_groups,
               down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
               num_class_embeds=num_class_embeds)
    unet.calls = []
    return unet.eval()


# ------------------------------------------------------------------------------------------------ training runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "scripts", "train.py")
TINY = ["--ddpm_num_steps", "20", "--ddpm_num_inference_steps", "5", "--num_sample_images", "4",
        "--eval_max_images", "16", "--train_batch_size", "16", "--logger", "none", "--lr_warmup_steps", "2",
        "--unet_preset", "cpu-8", "--checkpoints_total_limit", "2"]


# The one tiny finished run most tests start from (conftest.py's `trained_run`, trained once per session; each test
# takes its own copy, `run_copy`): 6 steps, checkpoints at 2 and 4, TensorBoard, a card naming TINY_RUN_REPO, and a
# --hub_token that must end up nowhere.
TINY_RUN_REPO = "ns/tiny"
TINY_RUN_TOKEN = "hf_not_a_real_token_value_000000000"
TINY_RUN = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--logger", "tensorboard", "--hub_model_id",
            TINY_RUN_REPO, "--hub_token", TINY_RUN_TOKEN]


def train_env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")


# ------------------------------------------------------------------------------------------------ forked runs
# A fresh interpreter spends about 12 s of CPU importing torch + diffusers (+ torch._dynamo and scipy.stats, which
# diffusers imports) before a tiny run's few seconds of work. Tests of what training does (resume, LR, data, losses)
# start `scripts/train.py` in a process forked from a server that has imported them once (the standard library's
# multiprocessing forkserver): a real process with its own pid, argv, cwd, environment, signals, files and exit code;
# only the interpreter start-up is shared. Tests of how a process is started and stopped by a launcher (torchrun,
# accelerate launch, the ddpm-hf console script, signals to a process group) and the session's trained_run keep a
# fresh interpreter.

_FORK_PRELOAD = ["ddpm_hf.cli", "ddpm_hf.cli.train", "ddpm_hf.training", "diffusers.models.unets.unet_2d", "accelerate", "datasets",
                 "sklearn.datasets", "matplotlib.pyplot", "safetensors.torch", "torch.utils.tensorboard", "helpers"]
_forkserver = []


def _fork_context():
    """The forkserver context, its server started (once per test process) with train_env()'s variables, which some
    libraries read at import."""
    import multiprocessing
    from multiprocessing import forkserver

    if not _forkserver:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_FORK_PRELOAD)
        saved = dict(os.environ)
        os.environ.update(train_env())
        try:
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        _forkserver.append(ctx)
    return _forkserver[0]


def _forked_main(program, argv, cwd, env, stdout, stderr, file_size_limit):
    """In the forked process: ``python PROGRAM ARGV`` (a script's path, or ``python -m PROGRAM`` for a module's
    name) with ``env`` in ``cwd``, stdout/stderr to the files named (appended), atexit handlers run as an
    interpreter's are at exit."""
    import atexit
    import resource
    import runpy

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    if file_size_limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        if program.endswith(".py"):
            sys.argv = [program, *argv]
            runpy.run_path(program, run_name="__main__")
        else:
            sys.argv = [program, *argv]  # run_module sets argv[0] to the module's file
            runpy.run_module(program, run_name="__main__", alter_sys=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()


class ForkedTrain:
    """``python scripts/train.py ARGS`` forked (see above), with subprocess.Popen's poll / wait / send_signal /
    returncode / pid; stdout and stderr go to the files given, or to temporary files of its own that ``finish``
    reads and deletes. ``program`` (a module's name) runs ``python -m PROGRAM ARGS`` instead (see ``forked_cli``)."""

    def __init__(self, args, cwd, env=None, stdout=None, stderr=None, file_size_limit=None, program=None):
        import tempfile

        self.args, self._owned = args, []
        self.program = program or "scripts/train.py"
        if stdout is None:
            self._owned = [tempfile.mkstemp(prefix="ddpm-hf-train-", suffix=s)[1] for s in (".out", ".err")]
            stdout, stderr = self._owned
        self.stdout_path, self.stderr_path = str(stdout), str(stderr or stdout)
        env = dict(train_env(), **(env or {}))
        argv = list(args) if program else [*TINY, *args]
        self.process = _fork_context().Process(
            target=_forked_main, args=(program or TRAIN, argv, str(cwd), env, self.stdout_path, self.stderr_path,
                                       file_size_limit))
        self.process.start()
        self.pid = self.process.pid

    @property
    def returncode(self):
        return self.process.exitcode

    def poll(self):
        return self.process.exitcode

    def wait(self, timeout=None):
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.program, timeout)
        return self.process.exitcode

    def send_signal(self, sig):
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def output(self):
        """(stdout, stderr) text."""
        read = lambda path: open(path, errors="replace").read()
        return read(self.stdout_path), "" if self.stderr_path == self.stdout_path else read(self.stderr_path)

    def finish(self, timeout=None):
        """Wait for the end (killed after ``timeout`` s): a CompletedProcess with what it printed."""
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.wait()
        stdout, stderr = self.output()
        for path in self._owned:
            os.remove(path)
        return subprocess.CompletedProcess([self.program, *self.args], code, stdout, stderr)


def launch_lock():
    """A lock the test workers share around multi-process launches (torchrun, two simulated nodes): two at once on
    two cores twice hung past 300 s in suite runs (a free port picked by one and taken by the other's gloo sockets
    is the suspected cause)."""
    import tempfile

    return FileLock(os.path.join(tempfile.gettempdir(), "ddpm-hf-tests-launch.lock"))


def abort_with_stacks(pids):
    """The processes ``pids`` and all their descendants (a launcher's workers sit in process groups of their own):
    SIGABRT first, so that each Python process started with PYTHONFAULTHANDLER=1 prints every thread's stack to its
    stderr (where a hang sat), then SIGKILL."""
    import signal
    import time

    import psutil  # accelerate's dependency

    tree = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            tree.append(psutil.Process(pid))
    tree += [child for p in list(tree) for child in p.children(recursive=True)]
    for sig in (signal.SIGABRT, signal.SIGKILL):
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        time.sleep(3)


def without_progress_bars(text):
    """``text`` without tqdm's carriage-return redraws (the last state of each bar is kept) and faulthandler's list
    of extension modules."""
    lines = (line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
    return "\n".join(line for line in lines if not line.startswith("Extension modules:"))


def run_train(*args, cwd, launcher=None, timeout=300, env=None, fresh=False):
    """A tiny run (TINY + ARGS) to its end, asserted to exit 0; returns an object with stdout/stderr/returncode.
    With ``launcher`` (e.g. torchrun; under ``launch_lock``) or ``fresh`` it is a fresh interpreter, else a forked
    one (ForkedTrain)."""
    if not (launcher or fresh):
        r = ForkedTrain(args, cwd, env=env).finish(timeout)
        assert r.returncode == 0, r.stderr[-3000:]
        return r
    cmd = (launcher or [sys.executable]) + [TRAIN, *TINY, *args]
    with launch_lock() if launcher else contextlib.nullcontext():
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(train_env(), PYTHONFAULTHANDLER="1", **(env or {})),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # every process prints its stacks, then dies; then what it had printed
            abort_with_stacks([proc.pid])
            stdout, stderr = proc.communicate()
            raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{stdout[-2000:]}\n"
                                 f"{without_progress_bars(stderr)[-12000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def made_once(tmp_path_factory, name, make):
    """The folder ``name`` that ``make(folder)`` fills, made once per test session. Under pytest-xdist (`make test`
    runs two workers, each with its own base temp folder) it is made in the folder the workers share, by the first
    worker to ask, while the others wait on a file lock; a folder left half-made by a failed ``make`` is made again.
    Read it only."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # the session's, above each worker's popen-gwN
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def run_trains(*arg_lists, cwd, timeout=600):
    """Independent tiny runs (each ``run_train``'s arguments) side by side, each in its own process on one thread:
    on two cores a pair takes about the wall time of one."""
    procs = [ForkedTrain(args, cwd) for args in arg_lists]
    for r in [proc.finish(timeout) for proc in procs]:
        assert r.returncode == 0, r.stderr[-3000:]


def cli_subprocess(*args, env=None, timeout=600):
    """``python -m ddpm_hf.cli ARGS`` in a fresh interpreter (the training environment unless ``env``), to its end:
    the CompletedProcess with text stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "ddpm_hf.cli", *map(str, args)], env=env or train_env(),
                          capture_output=True, text=True, timeout=timeout)


def forked_cli(*args, cwd=None, env=None, timeout=300):
    """``python -m ddpm_hf.cli ARGS`` (what the ``ddpm-hf`` console script runs) to its end in a forked process
    (ForkedTrain's server: no interpreter start-up), with train_env() and ``env`` on top: a CompletedProcess with its
    exit code and what it printed. For commands as a user runs them that need no fresh import: not for import-time
    behaviour, nor with Hub variables (HF_ENDPOINT, HF_HOME, ...), which huggingface_hub reads when it is imported,
    already done in the server with train_env()'s."""
    return ForkedTrain([str(a) for a in args], cwd or os.getcwd(), env=env, program="ddpm_hf.cli").finish(timeout)


def cli_in_process(capsys, *argv):
    """``ddpm-hf ARGV`` run by ddpm_hf.cli.main in this process (no interpreter start-up or import cost), for the
    tests of what a command does, not of how a process behaves: its exit code, stdout and stderr (``capsys``)."""
    from accelerate.state import AcceleratorState

    from ddpm_hf.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        AcceleratorState._reset_state(True)
    out, err = capsys.readouterr()
    return code, out, err


def cli_in_fixture(*argv):
    """``ddpm-hf ARGV`` by ddpm_hf.cli.main in this process for a module-scoped fixture (no capsys there): raises
    what the command raises, SystemExit included."""
    from accelerate.state import AcceleratorState

    from ddpm_hf.cli import main

    try:
        main([str(a) for a in argv])
    finally:
        AcceleratorState._reset_state(True)


def read_history(folder):
    with open(os.path.join(folder, "history.jsonl")) as f:
        return [json.loads(line) for line in f]


def read_weights(folder):
    return load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))


def png_folder(root, n=12, size=(12, 10), mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------------ subprocesses

PYTHON = sys.executable
PACKAGE_DIR = os.path.dirname(os.path.abspath(ddpm_hf.__file__))
SEED = 1234
BATCH = 2
STEPS = 10

# ------------------------------------------------------------------------------------------------ subprocess code

# Goes first in the -c code of a subprocess that must not see ddpm_hf.
_BLOCK_DDPM_HF = textwrap.dedent(
    """
    import sys

    class _BlockDDPMHF:
        def find_spec(self, name, path=None, target=None):
            if name == "ddpm_hf" or name.startswith("ddpm_hf."):
                raise ImportError(f"ddpm_hf is blocked in this process ({name})")
            return None

    sys.meta_path.insert(0, _BlockDDPMHF())
    assert "ddpm_hf" not in sys.modules, "ddpm_hf was imported at interpreter start-up"
    try:
        import ddpm_hf
    except ImportError:
        pass
    else:
        raise SystemExit("ddpm_hf is importable although it is blocked")
    """
)

# At the end of such a subprocess: nothing of the package was used.
_CHECK_NO_DDPM_HF = textwrap.dedent(
    """
    import os as _os
    _used = sorted(n for n in sys.modules if n == "ddpm_hf" or n.startswith("ddpm_hf."))
    _used += sorted(
        n for n, m in list(sys.modules.items())
        if getattr(m, "__file__", None) and _os.path.abspath(m.__file__).startswith(ARGS["package_dir"] + _os.sep)
    )
    assert not _used, f"modules of ddpm_hf were loaded: {_used}"
    """
)

# Every subprocess: only loopback may be resolved or connected to; ARGS and result() for the test's data.
_GUARD = CLIENT_PRELUDE + textwrap.dedent(
    """

    import numpy as np
    import torch

    def generate(pipe, seed=ARGS.get("seed", 0)):
        pipe.set_progress_bar_config(disable=True)
        return pipe(
            batch_size=ARGS["batch"], generator=torch.Generator("cpu").manual_seed(seed),
            num_inference_steps=ARGS["steps"], output_type="np",
        ).images

    def public_config(config):
        return {k: v for k, v in dict(config).items() if not k.startswith("_")}
    """
)


def run_python(code, args, env, block_ddpm_hf=False, timeout=180):
    """Run ``code`` in a fresh interpreter with ``env``; return what it passed to ``result``."""
    args = dict(args, package_dir=PACKAGE_DIR, seed=SEED, batch=BATCH, steps=STEPS)
    script = (_BLOCK_DDPM_HF if block_ddpm_hf else "") + _GUARD + textwrap.dedent(code)
    if block_ddpm_hf:
        script += _CHECK_NO_DDPM_HF
    proc = subprocess.run(
        [PYTHON, "-c", script, json.dumps(args)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert "BLOCKED" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, f"subprocess failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT:")]
    assert lines, f"subprocess printed no result:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT:"):])


# One intra-op thread: these models are tiny, and on a busy machine torch's thread pool makes the first forward
# pass take many seconds instead of a fraction of one.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def local_env(tmp_path):
    """Environment for a subprocess that loads local folders only: fresh HF_HOME / HF_MODULES_CACHE, offline."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "DIFFUSERS_")) and k != "TRANSFORMERS_OFFLINE"
    }
    env.update(
        THREADS,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    return env


def hub_env(hub, tmp_path):
    env = hub.client_env(tmp_path / "hf_home")
    env.pop("DIFFUSERS_DISABLE_REMOTE_CODE", None)
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    env.update(THREADS)
    return env


def kill_after_checkpoint(args, out, cwd, checkpoint="checkpoint-4"):
    """Start the tiny run ``args`` (forked, ForkedTrain), SIGKILL it as soon as ``out/checkpoint`` exists (at most
    240 s), and check that it died with the checkpoint written and before the end (no metrics.json)."""
    import signal
    import time

    proc = ForkedTrain(args, cwd)
    deadline = time.time() + 240
    while not (out / checkpoint).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.finish()
    assert (out / checkpoint).exists() and not (out / "metrics.json").exists()

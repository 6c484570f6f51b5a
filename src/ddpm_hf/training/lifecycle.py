"""A training run's life around the loop: the accelerator, the output folder and its lock, the resume, stopping on
purpose (SIGTERM from a cluster preempting the job, SIGINT from Ctrl-C) with one ``checkpoint(reason)``, and dying with
the launcher.

A signal only sets a flag; the loop checks it once per step on every rank (one all-reduce), every rank writes the
checkpoint of that step and the run raises ``Interrupted``. Under ``accelerate launch`` and ``torchrun`` the training
process also asks the kernel for SIGTERM when its launcher dies (``die_with_launcher``), so a launcher killed alone
never leaves a process training unseen: that SIGTERM writes the checkpoint like any other.
"""

import contextlib
import os
import signal
import sys
import time
from datetime import timedelta

from ..errors import Interrupted, OutputDirError, RunError, TrackerMissing
from ..run_dir import (OutputLock, check_output_dir, clear_output_dir, read_training_state, remove_stale_tmp,
                       resolve_checkpoint, run_files)
from .checkpoints import any_rank, register_unet_hooks, save_checkpoint, verify_checkpoint

PR_SET_PDEATHSIG = 1  # linux/prctl.h
LAUNCHERS = ("accelerate", "torch.distributed.run", "torchrun", "torch/distributed/run.py")


class StopSignals:
    """SIGTERM and SIGINT handlers that only set a flag (``signum``), checked once per step; a second signal a second
    or more after the first stops at once (torchrun forwards the Ctrl-C the terminal already sent every worker, within
    milliseconds: that one is not a second request). Installed on the main thread only; ``restore`` puts the previous
    handlers back."""

    def __init__(self):
        self.signum, self._previous, self._first = None, {}, 0.0

    def install(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        if self.signum is not None:  # asked twice: stop now, the last complete checkpoint stays
            if time.time() - self._first >= 1.0:
                self.restore()
                os.kill(os.getpid(), signum)
            return
        self.signum, self._first = signum, time.time()
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                         "(send it again to stop at once)\n")
        sys.stderr.flush()

    def requested(self):
        """Whether this process received SIGTERM/SIGINT (no collective: the bound's loop asks it per term)."""
        return self.signum is not None

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def launched_by_launcher(parent=None):
    """Whether this process was started by ``accelerate launch`` or ``torchrun`` (torch elastic's agent sets
    TORCHELASTIC_RUN_ID; accelerate's one-process launcher is recognised by its command line)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return True
    try:
        with open(f"/proc/{parent or os.getppid()}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(name in command for name in LAUNCHERS)


def exit_launched_worker(accelerator):
    """End a launched worker of a multi-process run at once, once every rank has finished (its outputs written, the
    trackers closed, the process group destroyed): flush, then ``os._exit(0)``. Tearing down the run's objects
    instead (the DDP reducer's reference to the destroyed gloo process group) has blocked a worker forever in C++
    after ``train`` returned, under load about one run in ten (faulthandler: its innermost Python frame the call of
    ``train``), and torch elastic's agent then waits for it. Only under a launcher (never in-process callers), only
    with several processes."""
    if accelerator.num_processes <= 1 or not launched_by_launcher():
        return
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def die_with_launcher():
    """Under a launcher (Linux): ask the kernel to send this process SIGTERM when its parent dies
    (``prctl(PR_SET_PDEATHSIG, SIGTERM)``), so that a launcher killed alone (Kubernetes signals PID 1 only), or one
    that exits without waiting for its worker (accelerate's one-process launcher), leaves no process training unseen:
    the SIGTERM makes it checkpoint and stop. Not under a shell (``ddpm-hf train``, ``python scripts/train.py``): a
    run started with nohup must outlive its terminal. Returns whether the request was made."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if not launched_by_launcher(parent):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def make_accelerator(config):
    """The Accelerator of a run: precision, compile backend, tracker (tensorboard or wandb, in --logging_dir) and the
    process-group timeout. Several processes and no GPU (torchrun on a CPU machine) need cpu=True (MULTI_CPU, gloo)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    if config.logger == "wandb":
        from accelerate.utils import is_wandb_available

        if not is_wandb_available():
            raise TrackerMissing("{logger} wandb needs the wandb package: `pip install wandb` (WANDB_MODE=offline "
                                 "logs without a network), or use {logger} tensorboard")
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(
        cpu=multi_cpu,
        mixed_precision=config.mixed_precision,
        dynamo_backend=config.dynamo_backend,
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(project_dir=config.output_dir,
                                            logging_dir=os.path.join(config.output_dir, config.logging_dir)),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=config.ddp_timeout))],
    )


def start_trackers(config, accelerator):
    """accelerate's tracker (tensorboard or wandb) with the run's scalar settings (no token)."""
    if config.logger == "none":
        return
    settings = {k: v for k, v in config.record().items() if isinstance(v, (int, float, str, bool))}
    init_kwargs = {}
    if config.logger == "wandb":  # wandb's files beside tensorboard's: in --logging_dir
        logging_dir = os.path.join(config.output_dir, config.logging_dir)
        os.makedirs(logging_dir, exist_ok=True)
        init_kwargs = {"wandb": {"dir": logging_dir}}
    accelerator.init_trackers("ddpm-hf", config=settings, init_kwargs=init_kwargs)


class Run:
    """One training run's folder and life, as a context: on entry the folder is checked (not a file, not another
    run's unless --overwrite_output_dir or a resume), locked and cleared of half-written checkpoints, and the
    checkpoint to resume from is verified, all before anything is written; on exit the signal handlers and the lock
    are released (and a folder this run created stays only if something was written in it)."""

    def __init__(self, config, keep=()):
        self.config, self.accelerator, self.keep = config, make_accelerator(config), tuple(keep)
        self.main = self.accelerator.is_main_process
        self.lock, self.stop = OutputLock(config.output_dir), StopSignals()
        self.resume_from, self.saved_step, self.created = None, None, False

    def __enter__(self):
        config, out = self.config, self.config.output_dir
        check_output_dir(out)
        self.created = not os.path.isdir(out)
        held = [] if config.overwrite_output_dir or config.resume_from_checkpoint else run_files(out)
        if held:  # checked by every rank before any writes
            raise OutputDirError("{output_dir} {out} already holds a training run ({held}): add "
                                 "{resume_from_checkpoint} latest to continue it, {overwrite_output_dir} to replace "
                                 "it, or choose another {output_dir}", out=out, held=", ".join(held))
        try:
            if self.main:  # one run per folder (a dead run's lock is taken over)
                try:
                    os.makedirs(out, exist_ok=True)
                except OSError as error:  # e.g. a parent that is a file
                    raise OutputDirError("{output_dir} {out} cannot be created ({cause}): choose another "
                                         "{output_dir}", out=out,
                                         cause=f"{type(error).__name__}: {error.strerror}") from None
                self.lock.acquire()
                remove_stale_tmp(out)  # checkpoint-N.tmp of a run killed while writing
            self.accelerator.wait_for_everyone()
            if config.resume_from_checkpoint:  # every file opened now: a damaged checkpoint stops here, named
                self.resume_from = resolve_checkpoint(config.resume_from_checkpoint, out)
                if self.resume_from:
                    verify_checkpoint(self.resume_from, self.accelerator.num_processes, config.use_ema,
                                      config.mixed_precision == "fp16")
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.main and self.created and self.lock.held:
            self.lock.release()  # a run that failed at start leaves no empty folder behind
            with contextlib.suppress(OSError):
                os.rmdir(self.config.output_dir)
        self.stop.restore()
        self.lock.release()
        return False

    def clear_for_overwrite(self):
        """--overwrite_output_dir: empty the folder (the lock and ``keep`` stay), once the data is known to load."""
        if self.main and self.config.overwrite_output_dir:
            clear_output_dir(self.config.output_dir, self.keep)
        self.accelerator.wait_for_everyone()

    def register(self, config, model, flat, ema, noise_scheduler):
        """Hold what the rest of the run saves, samples and evaluates: the final ``config`` (class names and step
        budget filled in), the UNet, its flat parameter buffer, the EMA (or None) and the noise scheduler
        (``export``'s functions and the held-out bound take the run). Checkpoints hold unet/ and unet_ema/ as
        UNet2DModel folders (see checkpoints.register_unet_hooks)."""
        self.config, self.model, self.flat, self.ema, self.noise_scheduler = config, model, flat, ema, noise_scheduler
        register_unet_hooks(self.accelerator, model, flat, ema)

    def resume(self):
        """Load the verified checkpoint (weights, EMA, optimizer, LR schedule, RNG) and return its counters
        {"step", "images_seen", "elapsed"}; zeros when starting fresh."""
        if self.resume_from is None:
            if self.config.resume_from_checkpoint == "latest":
                self.accelerator.print(f"resume_from_checkpoint=latest: no checkpoint in {self.config.output_dir}, "
                                       "starting fresh")
            return {"step": 0, "images_seen": 0, "elapsed": 0.0}
        try:
            self.accelerator.load_state(self.resume_from)
        except Exception as error:  # noqa: BLE001 - e.g. weights of another UNet configuration
            raise RunError("could not resume from {path}: {cause}. Resume with the settings of the run that wrote "
                           "it, or from another checkpoint.", path=self.resume_from,
                           cause=f"{type(error).__name__}: {str(error).strip()[:500]}") from error
        if self.ema is not None:
            self.ema.to(self.accelerator.device)
        state = read_training_state(self.resume_from)
        self.saved_step = state["step"]
        self.accelerator.print(f"resumed from {self.resume_from} at step {state['step']}")
        return {k: state[k] for k in ("step", "images_seen", "elapsed")}

    def signalled(self):
        """Whether any rank received SIGTERM/SIGINT (one all-reduce; every rank gets the same answer)."""
        return any_rank(self.accelerator, [self.stop.signum is not None])[0]

    def checkpoint_after_step(self, counters, signalled):
        """The checkpoints due after optimizer step N = counters["step"]: checkpoint-N every --checkpointing_steps
        (not after the last step, whose weights the end saves), and on a signal checkpoint-N, then stop
        (``checkpoint``)."""
        config = self.config
        if counters["step"] % config.checkpointing_steps == 0 and counters["step"] < config.max_train_steps:
            self.checkpoint("periodic", counters)
        if signalled:
            self.checkpoint("signal", counters)

    def checkpoint(self, reason, counters):
        """Write checkpoint-N of step N = counters["step"] on every rank (once per step), then, for reason
        "signal", stop: raise Interrupted naming it. reason "periodic": every --checkpointing_steps."""
        step = counters["step"]
        if self.saved_step != step:
            save_checkpoint(self.accelerator, self.config.output_dir, step, dict(counters),
                            self.config.checkpoints_total_limit)
            self.saved_step = step
        if reason == "signal":
            raise Interrupted(self.stop.signum or signal.SIGTERM,
                              os.path.join(self.config.output_dir, f"checkpoint-{step}"))

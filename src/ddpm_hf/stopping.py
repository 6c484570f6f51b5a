"""Stopping a training run on purpose: SIGTERM (a cluster preempting the job) and SIGINT (Ctrl-C) set a flag that
the loop checks once per step, every rank writes a checkpoint at that step, and the command to resume is printed."""

import os
import signal
import sys
import time


class Interrupted(Exception):
    """SIGTERM or SIGINT: every rank wrote ``checkpoint`` at the current step and stops."""

    def __init__(self, signum, checkpoint):
        super().__init__(signum, checkpoint)
        self.signum, self.checkpoint = int(signum), checkpoint


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

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def resume_command(argv):
    """``ddpm-hf train`` with the given flags and ``--resume_from_checkpoint latest`` (no --overwrite_output_dir, no
    token)."""
    import shlex

    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--resume_from_checkpoint", "--hub_token"):
            skip = "=" not in arg
            continue
        if name == "--overwrite_output_dir":
            continue
        out.append(arg)
    return shlex.join(["ddpm-hf", "train", *out, "--resume_from_checkpoint", "latest"])

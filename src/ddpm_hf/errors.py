class DDPMHFError(Exception):
    """Base of the errors ddpm_hf raises for bad input or a failed run; the CLI prints their message (no traceback)."""


# The kinds below are raised by the libraries; only the CLI turns one into a message (naming its flags) and an exit
# code.


class ConfigError(DDPMHFError, ValueError):
    """A setting out of its range or contradicting another. ``template`` names settings as ``{field}``: ``str()``
    gives the plain field names (a library caller), ``message(name)`` lets the CLI spell them as its flags."""

    def __init__(self, template):
        import string

        self.template = template
        self.fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        super().__init__(self.message(lambda field: field))

    def message(self, spell):
        """The message with each setting written as ``spell(field)`` (e.g. ``lambda f: "--" + f``)."""
        return self.template.format(**{field: spell(field) for field in self.fields})


class RunError(DDPMHFError, RuntimeError):
    """A failure the user can act on (disk full, corrupt checkpoint, NaN loss, busy output folder, bad data): the
    message names the problem and the fix; the CLI prints it and exits with code 2 without a traceback."""


class MissingSplit(RunError):
    """The split asked for does not exist (the held-out split is then skipped; the training split is fatal)."""


class OutputDirError(RunError):
    """The output folder cannot be used: it is a file, holds another run, or is locked by a live run."""


class PushFailed(RunError):
    """The run finished and is saved, but its upload to the Hub failed (the message says how to upload it)."""


class TrackerMissing(RunError):
    """The experiment tracker asked for (``--logger wandb``) is not installed."""


class Interrupted(DDPMHFError):
    """SIGTERM or SIGINT: every rank wrote ``checkpoint`` at the current step and stopped."""

    def __init__(self, signum, checkpoint):
        super().__init__(signum, checkpoint)
        self.signum, self.checkpoint = int(signum), checkpoint

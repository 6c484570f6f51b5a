"""The errors ddpm_hf raises for bad input or a failed run. Libraries raise them with a message about the value; only
the command line (``ddpm_hf.cli``) turns one into a message that names a flag, from the error's ``argument``."""


class DDPMHFError(Exception):
    """Base of the errors ddpm_hf raises for bad input or a failed run; the CLI prints their message (no traceback)."""


class BadArgument(DDPMHFError, ValueError):
    """An argument outside its valid values. ``argument`` is the parameter's name (the CLI shows it as its flag);
    the message says what is wrong with the value and what would do."""

    def __init__(self, argument, message):
        super().__init__(message)
        self.argument = argument


class LayoutError(DDPMHFError, ValueError):
    """A folder that is not a finished training run in this version's layout (the message says what it is)."""


class ModelNotFound(DDPMHFError, FileNotFoundError):
    """A model that is neither a saved pipeline folder nor a Hub repo id, or that cannot be loaded."""


class InceptionWeightsMissing(DDPMHFError, RuntimeError):
    """No Inception file at hand and none could be downloaded; ``argument`` names the parameter that gives one."""

    argument = "inception_weights"


class PushError(DDPMHFError, RuntimeError):
    """A push that cannot go ahead as asked; ``argument`` names the parameter at fault, if one is."""

    def __init__(self, message, argument=None):
        super().__init__(message)
        self.argument = argument




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

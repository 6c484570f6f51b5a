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

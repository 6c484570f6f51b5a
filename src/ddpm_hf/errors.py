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
    """A push refused before anything is uploaded because the request cannot be done as asked (e.g. ``private`` for
    a repo that exists and is public: a push never changes visibility); ``argument`` names the parameter at fault, if
    one is. Unlike PushFailed (an upload that was attempted and failed), the fix is to change the request."""

    def __init__(self, message, argument=None):
        super().__init__(message)
        self.argument = argument


class NamesSettings:
    """A message that names settings as ``{field}`` in ``template``: ``str()`` gives the plain field names (what a
    library caller sees), ``message(spell)`` lets the CLI spell them as its flags. Keyword ``values`` fill the other
    ``{name}`` slots verbatim (paths, exception text: braces in them are never parsed)."""

    def __init__(self, template, **values):
        import string

        self.template, self.values = template, values
        self.fields = [name for _, name, _, _ in string.Formatter().parse(template) if name and name not in values]
        super().__init__(self.message(lambda field: field))

    def message(self, spell):
        """The message with each setting written as ``spell(field)`` (e.g. ``lambda f: "--" + f``)."""
        return self.template.format(**{field: spell(field) for field in self.fields}, **self.values)


class ConfigError(NamesSettings, DDPMHFError, ValueError):
    """A setting out of its range or contradicting another (the settings named as in ``NamesSettings``)."""


class RunError(NamesSettings, DDPMHFError, RuntimeError):
    """A failure the user can act on (disk full, corrupt checkpoint, NaN loss, busy output folder, bad data): the
    message names the problem and the fix, and the settings it names as in ``NamesSettings``; the CLI prints it
    with flags and exits with code 2 without a traceback."""


class StreamFailed(RunError):
    """A streamed dataset's connection failed more times in a row than the retries allow (``--streaming``). The
    training loop saves a checkpoint at the last finished step first (one process), so the run resumes with
    ``resume_from_checkpoint latest`` and nothing trained is lost."""


class MissingSplit(RunError):
    """The split asked for does not exist (the held-out split is then skipped; the training split is fatal)."""


class OutputDirError(RunError):
    """The output folder cannot be used: it is a file, holds another run, or is locked by a live run."""


class CheckpointNotFound(RunError, FileNotFoundError):
    """The checkpoint named to resume from is neither a folder nor a checkpoint-N name inside the output folder."""


class PushFailed(RunError):
    """A push of a finished run failed (network, server, rights, interrupted) after huggingface_hub's own retries;
    the run is saved and unchanged. ``reason`` says what failed; ``output_dir``, ``repo_id``, ``private`` and
    ``revision`` are what to push again, ``token_given`` whether a token was passed as an argument (never the token).
    The message ends with how to resume: ``hub.push_run`` with the same arguments (the CLI's message gives its
    ``ddpm-hf push`` command there instead, from these attributes). Unlike PushError, nothing in the request was
    wrong and nothing was refused before uploading."""

    def __init__(self, reason, output_dir, repo_id, private=False, revision=None, token_given=False):
        self.reason, self.output_dir, self.repo_id = reason, output_dir, repo_id
        self.private, self.revision, self.token_given = bool(private), revision, bool(token_given)
        call = f"ddpm_hf.hub.push_run({str(output_dir)!r}, {repo_id!r}"
        call += (", private=True" if private else "") + (f", revision={revision!r}" if revision else "")
        call += (", token=<the same token>)" if token_given else ")")
        where = f"{repo_id} (branch {revision})" if revision else repo_id
        super().__init__("the upload to {where} {reason}\nThe run in {output_dir} is complete and unchanged. Resume the "
                         "push (files already on the Hub are not sent again) with:\n  {resume}", where=where,
                         reason=reason, output_dir=output_dir, resume=call)


class CardEdited(RunError):
    """The run's README.md was edited by hand since ddpm-hf wrote it (``model_card.edited_by_hand``): rendering the
    card again would lose the edits, so nothing is written; ``replace_edited_card`` asks for it anyway."""

    def __init__(self, path):
        super().__init__("{path} was edited by hand since ddpm-hf wrote it: left as it is (a push uploads it as it "
                         "is). {replace_edited_card} renders the card again, replacing the edits", path=path)
        self.path = path


class TrackerMissing(RunError):
    """The experiment tracker asked for (``logger="wandb"``) is not installed."""


class Interrupted(DDPMHFError):
    """SIGTERM or SIGINT: every rank wrote ``checkpoint`` at the current step and stopped."""

    def __init__(self, signum, checkpoint):
        super().__init__(signum, checkpoint)
        self.signum, self.checkpoint = int(signum), checkpoint

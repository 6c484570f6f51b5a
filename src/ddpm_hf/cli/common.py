"""What every ``ddpm-hf`` command shares: turning a library's typed error into one line that names the flag."""

import os
import shlex

from ..errors import DDPMHFError, NamesSettings, PushFailed


def push_command(error):
    """The ``ddpm-hf push`` command that resumes the push a PushFailed names (never with the token: the line after
    it asks for it)."""
    parts = ["ddpm-hf", "push", os.fspath(error.output_dir), "--hub_model_id", error.repo_id]
    if error.revision:
        parts += ["--hub_revision", error.revision]
    if error.private:
        parts.append("--hub_private_repo")
    return shlex.join(parts) + ("\n(adding the same --hub_token, or with HF_TOKEN set)" if error.token_given else "")


def flag_message(error, flags=None):
    """The message of ``error`` for the command line: when the error names the argument at fault (``argument``),
    the flag that sets it (``flags`` maps argument names to flag names where they differ) leads the message; when
    it names settings inside its message (``NamesSettings``: ConfigError, RunError), each is spelled as its flag."""
    def spell(name):
        return "--" + (flags or {}).get(name, name)

    if isinstance(error, PushFailed):  # resumed by the command, not the library call
        return error.template.format(**dict(error.values, resume=push_command(error)))
    if isinstance(error, NamesSettings):  # the settings named inside the message
        return error.message(spell)
    argument = getattr(error, "argument", None)
    message = str(error)
    if not argument:
        return message
    flag = spell(argument)
    if message.startswith(argument + " "):
        return flag + message[len(argument):]
    return f"{flag}: {message}"


def fail(parser, error, flags=None):
    """Exit 2 with ``parser``'s usage and the error's message (no traceback)."""
    parser.error(flag_message(error, flags) if isinstance(error, DDPMHFError) else str(error))


def check_positive(parser, **values):
    for name, value in values.items():
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")

"""The documentation cannot go stale: the site (mkdocs.yml, docs/) builds with --strict and its API reference names
the public classes; every `ddpm-hf ...` (and `scripts/train.py`) command line in README.md and docs/*.md parses with
the package's real parsers, so a renamed or removed flag fails here; every Python block of README.md and docs/*.md
runs.

How the blocks are read:
- a fenced block's language is the word after its opening fence; docs/*.md may only hold ```bash blocks (commands:
  ddpm-hf, make, python, torchrun, accelerate launch, optionally after VAR=value assignments) and ```python blocks;
- in a bash block, a line ending in a backslash continues on the next; `# comments` are dropped (shlex); a line with
  a `...` placeholder is not parsed;
- `ddpm-hf train` lines are parsed and checked as the command does at start (TrainConfig.create); the state they
  assume (a Hub login, a named checkpoint) is provided by the test, see test_command_line_parses;
- a Python block whose first line is `# docs-test: skip (reason)` is not run. Every other one runs in a fresh
  namespace, in a temporary working directory, after the substitutions below.
"""

import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README = ROOT / "README.md"

SKIP = "# docs-test: skip"
# The run folders the pages name, replaced by a copy of the session's tiny trained digits run (conftest.trained_run:
# an 8x8 digits model with T = 20 timesteps).
RUN_FOLDERS = ("outputs/demo", "outputs/mnist")
# Replaced in Python blocks before they run (exact text -> what runs): step and sample counts the pages give for real
# models, cut to what the tiny run takes (at most T = 20 steps) in a test's time.
SUBSTITUTIONS = {
    "num_inference_steps=1000": "num_inference_steps=4",
    "num_inference_steps=250": "num_inference_steps=4",
    "num_inference_steps=20": "num_inference_steps=4",
    "steps=(20,)": "steps=(4,)",
    "num_samples=1000": "num_samples=60",
    "bpd_timesteps=100": "bpd_timesteps=5",
    "batch_size=16": "batch_size=4",
}
# What a docs/*.md bash line may start with (after VAR=value assignments).
COMMANDS = ("ddpm-hf", "make", "python", "torchrun", "accelerate launch")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^\s*```\s*([\w+-]*)")


def rel(path):
    return path.relative_to(ROOT).as_posix()


def code_blocks(path):
    """[(language, line number of the opening fence, text)] of the fenced blocks of the markdown file ``path``."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if current is None and match:
            current = (match.group(1), number, [])
        elif current is not None and line.strip().startswith("```"):
            blocks.append((current[0], current[1], "\n".join(current[2])))
            current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"{rel(path)}:{current[1]}: a code block that is never closed"
    return blocks


def bash_lines(path):
    """[(line number, words)] of the commands of every bash block of ``path``: continuations joined, comments dropped,
    leading VAR=value assignments removed; lines with a `...` placeholder left out."""
    lines = []
    for language, start, text in code_blocks(path):
        if language not in ("bash", "sh", "shell", "console"):
            continue
        pending, first = "", None
        for offset, line in enumerate(text.splitlines(), 1):
            first = first or start + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command, pending = pending + line, ""
            number, first = first, None
            if not command.strip() or "..." in command:
                continue
            words = shlex.split(command, comments=True)
            while words and ENV_ASSIGNMENT.match(words[0]):
                words = words[1:]
            if words:
                lines.append((number, words))
    return lines


def train_arguments(words):
    """The flags of a training command line (``ddpm-hf train``, or ``python``/``torchrun``/``accelerate launch`` of
    scripts/train.py), or None for another command."""
    if words[:2] == ["ddpm-hf", "train"]:
        return words[2:]
    if words[0] in ("python", "python3", "torchrun", "accelerate"):
        scripts = [i for i, word in enumerate(words) if word.endswith("scripts/train.py")]
        if scripts:
            return words[scripts[0] + 1:]
    return None


def command_cases():
    cases = []
    for path in [README, *PAGES]:
        for number, words in bash_lines(path):
            if words[0] == "ddpm-hf" or train_arguments(words) is not None:
                cases.append(pytest.param(words, id=f"{rel(path)}:{number}"))
    return cases


def python_cases():
    cases = []
    for path in [README, *PAGES]:
        index = 0
        for language, start, text in code_blocks(path):
            if language == "python":
                index += 1
                skip = text.lstrip().startswith(SKIP)
                marks = [pytest.mark.skip(reason=text.strip().splitlines()[0])] if skip else []
                cases.append(pytest.param(path, start, text, id=f"{rel(path)}-block{index}-line{start}", marks=marks))
    return cases


# ------------------------------------------------------------------------------------------------ the pages' form


def test_every_page_is_in_the_nav_and_every_block_is_bash_or_python():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def files(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from (files(value) if isinstance(value, list) else [value])

    assert sorted(files(config["nav"])) == sorted(page.name for page in PAGES)
    for page in PAGES:
        for language, start, _ in code_blocks(page):
            assert language in ("bash", "python"), f"{rel(page)}:{start}: a ```{language} block (bash or python only)"
        for number, words in bash_lines(page):
            line = " ".join(words)
            assert line.startswith(COMMANDS), f"{rel(page)}:{number}: {line!r} is not one of {COMMANDS}"


def test_every_make_line_names_a_target():
    """`make X` in README.md and the pages names a target of the Makefile."""
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    for path in [README, *PAGES]:
        for number, words in bash_lines(path):
            if words[0] == "make":
                named = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
                assert set(named) <= targets, f"{rel(path)}:{number}: {shlex.join(words)}: no such target"


def test_the_blocks_are_found():
    """The reader finds what the pages hold: commands of every kind, the Python blocks, the skips."""
    commands = command_cases()
    assert len(commands) >= 40
    assert any(case.values[0][:2] == ["ddpm-hf", "train"] for case in commands)
    assert any(case.values[0][0] == "torchrun" for case in commands)
    blocks = python_cases()
    assert len(blocks) >= 15
    assert any(case.marks for case in blocks) and sum(not case.marks for case in blocks) >= 12


# ------------------------------------------------------------------------------------------------ commands


def parse(words):
    """Parse the command line ``words`` as the ``ddpm-hf`` command does: ``train`` (and scripts/train.py) with
    ddpm_hf.cli.train.parse_args, which also builds the checked TrainConfig; every other command with
    ddpm_hf.cli.build_parser's tree. Flags must be spelled in full (argparse's abbreviations are turned off: a page
    that says ``--num_inference_step`` is stale even where argparse would guess the flag). Exits as the parser does."""
    from ddpm_hf.cli import build_parser
    from ddpm_hf.cli import train as train_cli

    train = train_arguments(words)
    if train is not None:
        parser = train_cli.build_parser()
        parser.allow_abbrev = False
        return train_cli.parse_args(train, parser=parser)
    parser, commands = build_parser()
    for command_parser in (parser, *(p for p, _ in commands.values())):
        command_parser.allow_abbrev = False
    args = parser.parse_args(words[1:])
    assert args.command == words[1]
    return args


@pytest.mark.parametrize("words", command_cases())
def test_command_line_parses(words, capsys, tmp_path, monkeypatch):
    """The documented command parses with the command's real parser (`ddpm-hf train`'s also checks every value, as
    TrainConfig.create does at start): a renamed or removed flag, a bad choice or an out-of-range value fails.

    TrainConfig.create also checks the state a command assumes, which the test provides: a Hub login for
    --push_to_hub (a dummy HF_TOKEN; nothing is sent) and, in an empty working directory, the checkpoint folder a
    --resume_from_checkpoint NAME names inside --output_dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_docs_test_dummy_token")
    train = train_arguments(words)
    if train is not None and "--resume_from_checkpoint" in train:
        from ddpm_hf.training.config import TrainConfig

        name = train[train.index("--resume_from_checkpoint") + 1]
        output_dir = train[train.index("--output_dir") + 1] if "--output_dir" in train else TrainConfig.output_dir
        if name != "latest":
            (tmp_path / output_dir / name).mkdir(parents=True)
    try:
        parse(words)
    except SystemExit as stop:
        pytest.fail(f"{shlex.join(words)}\ndoes not parse (exit {stop.code}): {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("words", [
    ["ddpm-hf", "sample", "outputs/demo", "--num_inference_step", "20"],  # abbreviated: argparse alone would take it
    ["ddpm-hf", "sample", "outputs/demo", "--steps", "20"],  # no such flag
    ["ddpm-hf", "sample", "outputs/demo", "--scheduler", "plms"],  # no such choice
    ["ddpm-hf", "evaluate", "outputs/demo", "--metric", "bpd"],
    ["ddpm-hf", "train", "--learning_rte", "1e-3"],
    ["ddpm-hf", "train", "--adam_beta1", "1.5"],  # out of range: TrainConfig's check is part of parsing `train`
    ["python", "scripts/train.py", "--recipe", "cifar10"],
    ["ddpm-hf", "fly", "outputs/demo"],  # no such command
], ids=["abbreviated", "unknown-flag", "bad-choice", "evaluate-flag", "train-flag", "train-range", "script-recipe",
        "command"])
def test_a_stale_command_line_fails_to_parse(words, capsys):
    """The check above has teeth."""
    with pytest.raises(SystemExit):
        parse(words)
    assert "error" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ Python blocks


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("path", "line", "code"), python_cases())
def test_python_block_runs(path, line, code, run_copy, tmp_path, monkeypatch):
    """The block runs as printed, in a fresh namespace and a temporary working directory, with the run folders it
    names replaced by a copy of the tiny trained run and the SUBSTITUTIONS applied."""
    monkeypatch.chdir(tmp_path)
    for folder in RUN_FOLDERS:
        code = code.replace(f'"{folder}', f'"{run_copy.as_posix()}')  # also "outputs/demo/checkpoint-500" etc.
    for text, replacement in SUBSTITUTIONS.items():  # whole values only: "=20" does not match "=200"
        code = re.sub(re.escape(text) + r"(?![\w.])", replacement, code)
    namespace = {"__name__": "__docs__"}
    exec(compile(code, f"{rel(path)}, block at line {line}", "exec"), namespace)  # noqa: S102 - the docs' own code


# ------------------------------------------------------------------------------------------------ the site


@pytest.mark.slow
def test_site_builds_strict_with_the_api_reference(tmp_path):
    """`mkdocs build --strict` (as `make docs`) succeeds: no broken link or anchor, no missing page, every `:::` module
    found; the API page documents the public classes."""
    import os

    mkdocs = pathlib.Path(sys.executable).parent / "mkdocs"
    site = tmp_path / "site"
    done = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(site)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ("DDPMHFScheduler", "DDPMHFPipeline", "DDPMHFInpaintPipeline", "DDPMHFSuperResolutionPipeline",
                 "DDPMHFImg2ImgPipeline", "bits_per_dim", "TrainConfig", "EvaluationConfig"):
        assert re.search(rf'id="ddpm_hf\.[\w.]*\.{name}"', api), name
    for page in PAGES:
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (site / name).is_file(), name


def test_api_reference_covers_every_module():
    """Every module of the package but the command line's (ddpm_hf.cli: its reference is `--help`) has its `:::` block
    on the API page, so a new module cannot be left out of the reference."""
    package = ROOT / "src" / "ddpm_hf"
    modules = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[1:2] == ("cli",) or parts[-1] == "__main__":
            continue
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    documented = set(re.findall(r"^::: ([\w.]+)", (DOCS / "api.md").read_text(), flags=re.M))
    assert sorted(modules - documented) == []

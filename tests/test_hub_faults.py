"""Pushes to a loopback Hub that behaves as the real one: weights go up through Git LFS (batch, PUT, verify, then a
commit naming them), and the server fails the ways the real one does (500, 429 with Retry-After, a connection cut in
the middle of an upload). huggingface_hub retries what it retries; where it gives up, `ddpm-hf push` says so once,
names the repo and the command that resumes the push, and leaves the run as it was. Also: no token reaches a file or a
request other than its Authorization header, and no torch.load unpickles arbitrary objects.

Measured with huggingface_hub 2.4.0 (HF_HUB_DISABLE_XET=1, the legacy single-commit path of upload_folder): preupload,
the LFS batch, the PUT of an object and its verify go through http_backoff (5 retries, waits 1, 2, 4, 8, 8 s, or
Retry-After + 1 s) on 408/429/500/502/503/504 and on timeouts and network errors; create_repo, create_branch and the
commit itself are sent once.
"""

import ast
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from ddpm_hf.run_dir import LOCK_NAME

from hub_server import CLIENT_PRELUDE, HubServer
from helpers import TINY, TINY_RUN_REPO, TRAIN

ROOT = Path(__file__).resolve().parent.parent
REPO = TINY_RUN_REPO
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
SENTINEL = "hf_SENTINEL_fake_token_for_tests_0123456789"  # not a token: a marker searched for in every byte

# `ddpm-hf <ARGS>` in a process that may only reach loopback (hub_server.CLIENT_PRELUDE)
CLI = CLIENT_PRELUDE + "from ddpm_hf.cli import main\nmain(ARGS)\n"
# the same, then the heavy modules the push imported: torch, diffusers, a pipeline (ddpm_hf.pipeline_ddpm_hf_hub, the
# upload, imports the standard library and huggingface_hub only)
CLI_HEAVY = CLI + ("import sys\nresult(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')\n"
                   "    or (m.startswith('ddpm_hf.pipeline') and m != 'ddpm_hf.pipeline_ddpm_hf_hub')))\n")


@pytest.fixture
def run(run_copy):
    """A copy of the session's tiny run (conftest.trained_run), whose card names REPO."""
    return run_copy


def _push(hub, out, *args, home="hf_home", token="hf_test_dummy", timeout=240, wait=True, code=CLI):
    env = hub.client_env(out.parent / home, token=token)
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    cmd = [sys.executable, "-c", code, json.dumps(["push", str(out), "--hub_model_id", REPO, *args])]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "BLOCKED" not in r.stderr, r.stderr
    return r


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _download(hub, home, filename, revision=None):
    """A fresh client (empty cache) downloads one file of REPO; returns its bytes."""
    code = CLIENT_PRELUDE + (
        "from huggingface_hub import hf_hub_download\n"
        "result({'path': hf_hub_download(ARGS[0], ARGS[1], revision=ARGS[2])})\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps([REPO, filename, revision])],
                       env=hub.client_env(home), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "BLOCKED" not in r.stderr, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT:")][-1]
    return Path(json.loads(line[len("RESULT:"):])["path"]).read_bytes()


def _commit_lines(hub, branch="main"):
    """The NDJSON lines of every commit request the server received for REPO on ``branch``."""
    out = []
    for req in hub.raw_requests:
        if req["method"] == "POST" and req["target"].split("?")[0] == f"/api/models/{REPO}/commit/{branch}":
            out.append([json.loads(x) for x in req["body"].splitlines() if x.strip()])
    return out


def _retrain_weights(out):
    """New weights for the run, as another training would leave them."""
    tensors = load_file(out / WEIGHTS)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, out / WEIGHTS, metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------ the LFS path
@pytest.mark.slow
def test_push_uploads_weights_through_lfs_and_a_second_push_updates(run, tmp_path):
    """Also: the lock file names the host, and a push while a run holds it (`--push_to_hub` pushes before the lock
    is released) leaves it out of the upload and in the run. The pushing process imports neither torch nor diffusers
    nor a pipeline (seconds of start-up each): the upload (pipeline_ddpm_hf_hub.py) goes up with the pipeline."""
    (run / LOCK_NAME).write_text(f'{{"host": "{socket.gethostname()}", "pid": {os.getpid()}}}')
    with HubServer(tmp_path / "hub") as hub:
        r = _push(hub, run, code=CLI_HEAVY)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "RESULT:[]\n" in r.stdout, r.stdout[-3000:]
        assert (Path(hub.repo_dir(REPO)) / "pipeline_ddpm_hf_hub.py").read_bytes() == (
            ROOT / "src" / "ddpm_hf" / "pipeline_ddpm_hf_hub.py").read_bytes()
        assert not (Path(hub.repo_dir(REPO)) / LOCK_NAME).exists() and (run / LOCK_NAME).is_file()
        oid, size = _sha256(run / WEIGHTS), (run / WEIGHTS).stat().st_size
        # batch, then a PUT of the bytes to the upload action, then verify; the commit names the object
        assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in hub.requests
        assert ("PUT", f"/lfs-upload/models/{REPO}/{oid}") in hub.requests
        assert ("POST", f"/{REPO}.git/info/lfs/objects/verify") in hub.requests
        (commit,) = _commit_lines(hub)
        entries = {x["value"]["path"]: x for x in commit if x["key"] != "header"}
        assert LOCK_NAME not in entries
        assert entries[WEIGHTS] == {"key": "lfsFile", "value": {"path": WEIGHTS, "algo": "sha256", "oid": oid,
                                                                 "size": size}}
        assert entries["images/samples.png"]["key"] == "lfsFile"  # binary
        assert {entries[p]["key"] for p in ("model_index.json", "README.md", "unet/config.json")} == {"file"}
        assert hub.lfs_files(REPO)[WEIGHTS] == oid
        # read back by a fresh client through resolve: the object's bytes
        assert _download(hub, tmp_path / "fresh", WEIGHTS) == (run / WEIGHTS).read_bytes()
        assert hub.commit_count(REPO) == 2  # the repo's initial commit and the push

        # new weights (an unchanged run would make no commit: huggingface_hub skips files whose oid the Hub has)
        # push again: a new commit with a new LFS object, and the Hub serves them
        _retrain_weights(run)
        new_oid = _sha256(run / WEIGHTS)
        r = _push(hub, run)
        assert r.returncode == 0, r.stderr[-3000:]
        assert hub.commit_count(REPO) == 3 and hub.lfs_files(REPO)[WEIGHTS] == new_oid != oid
        assert ("PUT", f"/lfs-upload/models/{REPO}/{new_oid}") in hub.requests
        with urllib.request.urlopen(f"{hub.endpoint}/{REPO}/resolve/main/{WEIGHTS}", timeout=10) as answer:
            assert answer.read() == (run / WEIGHTS).read_bytes()


@pytest.mark.slow
def test_push_rides_out_transient_faults(run, tmp_path):
    """One 500 on preupload, one 429 (Retry-After: 0) on the LFS batch, a connection cut half-way through the PUT of
    the weights and one 500 on verify: huggingface_hub retries each and the push completes."""
    with HubServer(tmp_path / "hub") as hub:
        oid = _sha256(run / WEIGHTS)
        faults = [hub.add_fault("500", "POST", r"/preupload/"),
                  hub.add_fault("429", "POST", r"\.git/info/lfs/objects/batch$", retry_after=0),
                  hub.add_fault("drop", "PUT", f"/lfs-upload/.*/{oid}$"),
                  hub.add_fault("500", "POST", r"/objects/verify$")]
        r = _push(hub, run)
        assert r.returncode == 0, r.stderr[-3000:]
        assert [f["served"] for f in faults] == [1, 1, 1, 1]
        assert hub.requests.count(("PUT", f"/lfs-upload/models/{REPO}/{oid}")) == 2
        assert "Retrying in" in r.stderr or "Waiting" in r.stderr  # huggingface_hub's own retry warnings
        assert (Path(hub.repo_dir(REPO)) / WEIGHTS).read_bytes() == (run / WEIGHTS).read_bytes()
        assert hub.commit_count(REPO) == 2


# ------------------------------------------------------------------------------------------------ failures
@pytest.mark.slow
def test_failed_push_says_how_to_resume_and_the_resume_works(run, tmp_path):
    """Faults huggingface_hub does not retry: a 429 (Retry-After: 5) on create_repo, a 500 on the commit, the
    connection cut half-way through the commit's body. Each push fails with one error naming the repo and the
    command that resumes it (exit 2, no traceback), nothing is committed, the run stays as it was; that command then
    completes the push with one new commit, without sending the already stored LFS objects again."""
    before = _snapshot(run)
    with HubServer(tmp_path / "hub") as hub:
        for kind, method, path in (("429", "POST", r"^/api/repos/create$"), ("500", "POST", r"/commit/main$"),
                                   ("drop", "POST", r"/commit/main$")):
            rule = hub.add_fault(kind, method, path, times=1, retry_after=5)
            r = _push(hub, run)
            assert r.returncode == 2, (kind, r.returncode, r.stderr[-3000:])
            assert rule["served"] == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
            errors = [line for line in r.stderr.splitlines() if line.startswith("ddpm-hf push: error:")]
            assert len(errors) == 1 and f"the upload to {REPO} failed" in errors[0], r.stderr[-3000:]
            assert f"\n  ddpm-hf push {run} --hub_model_id {REPO}\n" in r.stderr
            assert hub.commit_count(REPO) <= 1  # nothing committed but the repo's initial commit
            assert _snapshot(run) == before  # the run is untouched and complete
        assert hub.lfs_files(REPO) == {}
        puts = [p for m, p in hub.requests if m == "PUT"]
        assert f"/lfs-upload/models/{REPO}/{_sha256(run / WEIGHTS)}" in puts  # stored before the commit failed
        # the command it names, once the Hub answers again, pushes and makes a new commit
        r = _push(hub, run)
        assert r.returncode == 0, r.stderr[-3000:]
        assert hub.commit_count(REPO) == 2 and hub.lfs_files(REPO)[WEIGHTS] == _sha256(run / WEIGHTS)
        assert (Path(hub.repo_dir(REPO)) / WEIGHTS).read_bytes() == (run / WEIGHTS).read_bytes()
        assert [p for m, p in hub.requests if m == "PUT"] == puts  # no object sent twice
    assert _snapshot(run) == before


def _hashes(folder):
    """sha256 of every file under ``folder`` (links followed), by relative path."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_push_keeps_a_hand_edited_card_and_writes_nothing_in_the_run(run, tmp_path):
    """Found as a user: `ddpm-hf push` rendered README.md again before uploading, so a hand-edited card was replaced,
    even by a push that then failed and said the run was "complete and unchanged". A push writes nothing in the run
    (every file hashed before and after a failed and a successful push) and uploads the edited card as it is; a run
    without a card gets one rendered for the repo, on the Hub only."""
    card = run / "README.md"
    card.write_text(card.read_text() + "\n## Notes by hand\n\nTrained on a Tuesday, the third attempt.\n")
    before = _hashes(run)
    with HubServer(tmp_path / "hub") as hub:
        rule = hub.add_fault("500", "POST", r"/commit/main$", times=1)
        r = _push(hub, run)
        assert r.returncode == 2 and rule["served"] == 1, r.stderr[-3000:]
        assert "is complete and unchanged" in r.stderr and hub.commit_count(REPO) <= 1
        assert _hashes(run) == before  # the edit is still there, and every other byte
        r = _push(hub, run)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "was edited by hand since ddpm-hf wrote it: pushed as it is" in r.stdout
        assert _download(hub, tmp_path / "fresh", "README.md") == card.read_bytes()
        assert _hashes(run) == before

    # no card in the run (never written, or removed): the Hub gets the card rendered for the repo, with its pictures;
    # the run still has none
    card.unlink()
    shutil.rmtree(run / "images")
    before = _hashes(run)
    with HubServer(tmp_path / "hub2") as hub:
        r = _push(hub, run)
        assert r.returncode == 0, r.stderr[-3000:]
        pushed = _download(hub, tmp_path / "fresh2", "README.md").decode()
        assert f'from_pretrained("{REPO}", trust_remote_code=True)' in pushed, pushed[:3000]
        assert "Notes by hand" not in pushed and "![" in pushed
        assert _download(hub, tmp_path / "fresh2", "images/samples.png") == (run / "samples" / "grid.png").read_bytes()
        assert _hashes(run) == before and not card.exists()


@pytest.mark.slow
def test_interrupted_push_says_how_to_resume_and_the_resume_works(run, tmp_path):
    """Ctrl-C while huggingface_hub's upload threads wait out a 429 (Retry-After: 60): the push stops at once (it
    does not wait for the threads) with exit code 130 and the command that resumes it; that command completes it."""
    with HubServer(tmp_path / "hub") as hub:
        rule = hub.add_fault("429", "PUT", f"/lfs-upload/.*/{_sha256(run / WEIGHTS)}$", times=None, retry_after=60)
        proc = _push(hub, run, wait=False)
        deadline = time.time() + 120
        while not rule["served"] and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert rule["served"] == 1, proc.communicate()[1][-3000:]
        start = time.time()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130 and time.time() - start < 10, stderr[-3000:]
        assert f"ddpm-hf push: error: the upload to {REPO} was interrupted" in stderr and "Traceback" not in stderr
        assert f"\n  ddpm-hf push {run} --hub_model_id {REPO}\n" in stderr
        assert WEIGHTS not in hub.lfs_files(REPO) and hub.commit_count(REPO) == 1
        hub.clear_faults()
        r = _push(hub, run)
        assert r.returncode == 0, r.stderr[-3000:]
        assert hub.commit_count(REPO) == 2 and hub.lfs_files(REPO)[WEIGHTS] == _sha256(run / WEIGHTS)


# ------------------------------------------------------------------------------------------------ private, branch
@pytest.mark.slow
def test_private_repo_and_branch_reach_the_server(run, tmp_path):
    with HubServer(tmp_path / "hub") as hub:
        r = _push(hub, run, "--hub_private_repo", "--hub_revision", "dev")
        assert r.returncode == 0, r.stderr[-3000:]
        assert hub.repo_private(REPO) is True
        assert ("POST", f"/api/models/{REPO}/branch/dev") in hub.requests
        assert ("POST", f"/api/models/{REPO}/commit/dev") in hub.requests
        assert hub.lfs_files(REPO, revision="dev")[WEIGHTS] == _sha256(run / WEIGHTS)
        assert not hub.lfs_files(REPO) and not (Path(hub.repo_dir(REPO)) / WEIGHTS).exists()  # main as created
        # private: without a token the repo does not exist; with one the branch serves the weights
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{hub.endpoint}/{REPO}/resolve/dev/{WEIGHTS}", timeout=10)
        assert err.value.code == 404
        req = urllib.request.Request(f"{hub.endpoint}/{REPO}/resolve/dev/{WEIGHTS}",
                                     headers={"Authorization": "Bearer hf_test_dummy"})
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert answer.read() == (run / WEIGHTS).read_bytes()
        # pushing again to the branch (existing now) with new weights updates it; main stays as it was
        _retrain_weights(run)
        commits = len(hub.commits(REPO, revision="dev"))
        r = _push(hub, run, "--hub_private_repo", "--hub_revision", "dev")
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(hub.commits(REPO, revision="dev")) == commits + 1
        assert hub.lfs_files(REPO, revision="dev")[WEIGHTS] == _sha256(run / WEIGHTS)
        assert len(hub.commits(REPO)) == 1
        # --hub_private_repo never pushes into an existing public repo
        hub.create_repo("ns/public")
        r = subprocess.run([sys.executable, "-c", CLI, json.dumps(["push", str(run), "--hub_model_id", "ns/public",
                                                                    "--hub_private_repo"])],
                           env=hub.client_env(tmp_path / "hf_home"), capture_output=True, text=True, timeout=240)
        assert r.returncode == 2 and "ns/public already exists and is public" in r.stderr
        assert "Traceback" not in r.stderr and hub.commit_count("ns/public") == 1


# ------------------------------------------------------------------------------------------------ security
def _login(hub, home):
    """Store SENTINEL the way `hf auth login` does (HF_HOME/token and stored_tokens)."""
    code = CLIENT_PRELUDE + "from huggingface_hub import login\nlogin(token=ARGS[0], add_to_git_credential=False)\n"
    r = subprocess.run([sys.executable, "-c", code, json.dumps([SENTINEL])],
                       env=hub.client_env(home, token=None), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return {p: p.read_bytes() for p in Path(home).rglob("*") if p.is_file()}


def _hidden(data: bytes, needle: bytes) -> bool:
    return needle in data or needle.decode().encode("utf-16-le") in data


@pytest.mark.slow
def test_token_is_never_written_or_sent_but_as_authorization(tmp_path):
    """Tiny runs with --push_to_hub, TensorBoard logging and checkpoints, their token from --hub_token, HF_TOKEN or
    the login cache (one run each, side by side, each with its own Hub): every byte they write (outputs,
    checkpoints, logs, events, HF_HOME, stdout/stderr), every byte their Hub received (targets, headers but
    Authorization, bodies, inline files decoded) and every file it stored is searched for the token."""
    needle = SENTINEL.encode()
    with contextlib.ExitStack() as stack:
        runs = {}
        for source in ("--hub_token", "HF_TOKEN", "login"):
            base = tmp_path / source.strip("-")
            hub = stack.enter_context(HubServer(base / "hub"))
            home = base / "hf_home"
            planted = _login(hub, home) if source == "login" else {}
            env = hub.client_env(home, token=SENTINEL if source == "HF_TOKEN" else None)
            env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
            extra = ["--hub_token", SENTINEL] if source == "--hub_token" else []
            proc = subprocess.Popen([sys.executable, TRAIN, *TINY, "--output_dir", str(base / "run"),
                                     "--max_train_steps", "2", "--checkpointing_steps", "1", "--logger", "tensorboard",
                                     "--logging_dir", "tb", "--push_to_hub", "--hub_model_id", "ns/secret", *extra],
                                    cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            runs[source] = (proc, hub, base / "run", home, planted)
        for source, (proc, hub, out, home, planted) in runs.items():
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, (source, stderr.decode()[-3000:])
            assert not _hidden(stdout + stderr, needle), source
            assert hub.lfs_files("ns/secret")[WEIGHTS] == _sha256(out / WEIGHTS)
            assert list((out / "tb").rglob("events.out.tfevents.*")) and list(out.glob("checkpoint-*"))
            used = 0
            for req in hub.raw_requests:
                for name, value in req["headers"]:
                    if name.lower() == "authorization":
                        used += value == f"Bearer {SENTINEL}"
                    else:
                        assert not _hidden(f"{name}: {value}".encode(), needle), (source, req["target"], name)
                assert not _hidden(req["target"].encode() + b"\n" + req["body"], needle), (source, req["target"])
                if "/commit/" in req["target"]:  # files sent inline are base64 in the commit body
                    for line in req["body"].splitlines():
                        content = json.loads(line)["value"].get("content")
                        assert content is None or not _hidden(base64.b64decode(content), needle), source
            assert used, source  # the token did authenticate the push
            searched = 0
            for folder in (out, home, Path(hub.root_dir)):
                for path in folder.rglob("*"):
                    if path.is_file() and path not in planted:
                        assert not _hidden(path.read_bytes(), needle), (source, path)
                        searched += 1
            assert searched > 20, source
            assert all(path.read_bytes() == data for path, data in planted.items())  # the login left as it was


def test_every_torch_load_is_weights_only():
    """Weights are safetensors; any torch.load in the project (package, scripts, benchmarks) must pass
    weights_only=True, so a checkpoint cannot run code when read."""
    calls = []
    for folder in ("src", "scripts", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                       and node.module == "torch" for a in node.names if a.name == "load"}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                if (isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name)
                        and f.value.id == "torch") or (isinstance(f, ast.Name) and f.id in aliases):
                    ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                             for k in node.keywords)
                    calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", ok))
    assert all(ok for _, ok in calls), [where for where, ok in calls if not ok]
    # and nothing in the package unpickles: no pickle module, no allow_pickle=True
    for path in sorted((ROOT / "src").rglob("*.py")):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path

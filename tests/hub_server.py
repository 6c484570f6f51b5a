"""A minimal Hugging Face Hub HTTP server for loopback tests (standard library only).

It speaks the subset of the Hub protocol that huggingface_hub 2.x, datasets and diffusers use to create repos and
branches, commit files (regular ones inline, large or binary ones through the Git LFS batch API), read repo info,
list trees and download files (see shared/HUB_PROTOCOL.md).

    with HubServer(tmp_path / "hub") as hub:
        env["HF_ENDPOINT"] = hub.endpoint          # "http://127.0.0.1:PORT"
        hub.seed_repo("ns/model", folder)          # store a local folder as a repo without HTTP
        hub.add_fault("500", method="PUT", path="/lfs-upload/", times=1)   # the next LFS upload answers 500
        ...
        assert ("GET", "/api/models/ns/model/revision/main") in hub.requests

Storage: the files of each repo's ``main`` branch sit under ``root_dir/<models|datasets|spaces>/<namespace>/<name>/``
(other branches under ``root_dir/.hub/branches/``), always as their real bytes, LFS files included; the repo's
metadata (head commit sha of each branch, commit counter, visibility, commit history, which paths are LFS) sits in
``root_dir/.hub/<type>/<ns>/<name>.json`` and uploaded LFS objects in ``root_dir/.hub/lfs/<type>/<ns>/<name>/<oid>``.
A revision is a branch name (``refs/heads/`` optional) or the head sha of a branch; anything else answers
``RevisionNotFound``.

Upload modes, as the Hub answers ``preupload``: a file is "lfs" when it is larger than 10 MB, when its 512-byte
sample looks binary (a NUL byte, or not UTF-8), or when its name matches the Hub's default ``.gitattributes`` LFS
patterns (``*.safetensors``, ``*.bin``, ``*.pt``, ...); otherwise "regular". The ``oid`` of a file already in the repo
is its sha256 for LFS files and its git blob sha1 for regular ones (what the client compares to skip unchanged files).
LFS (basic transfer): ``POST {P}{repo}.git/info/lfs/objects/batch`` answers, for each object not stored yet, an
``upload`` action (a signed URL on this server, PUT without Authorization, checked against oid and size) and a
``verify`` action (``POST {P}{repo}.git/info/lfs/objects/verify``); the commit's ``lfsFile`` lines must name
uploaded objects. ``resolve`` serves an LFS file's bytes with ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``.

Fault injection (``add_fault``): answer 500, 429 with ``Retry-After``, or drop the connection after reading part of
the request body, for requests matching a method and a path regex, a given number of times. ``requests`` records
(method, path) of every request and ``raw_requests`` every request whole (target, headers, body); ``faults_served``
what was injected. Unknown routes answer 404 and are logged (logger ``hub_server``) and recorded in
``hub.unknown_requests``.

The server binds to a loopback address only and runs in daemon threads; ``__exit__`` shuts it down.

Clients: huggingface_hub reads HF_ENDPOINT (and HF_HOME, HF_HUB_OFFLINE, ...) once, at import, into
``huggingface_hub.constants``; datasets copies it into ``datasets.config.HF_ENDPOINT`` and diffusers into
``diffusers.utils.constants``. The faithful way to point them here is a fresh subprocess whose environment is
``hub.client_env(hf_home)``. In-process use needs ``endpoint=`` on every call and still leaves module-level
constants (the agent-harness registry fetch, datasets' URLs) aimed at the real Hub, so prefer subprocesses.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

logger = logging.getLogger("hub_server")

REPO_TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}
URL_PREFIX = {"models": "", "datasets": "datasets/", "spaces": "spaces/"}


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data`` (what the Hub calls a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# The LFS patterns of the .gitattributes the Hub writes into every new repo, and its size limit for regular files.
DEFAULT_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz",
    "*.zip", "*.zst", "*tfevents*",
)
REGULAR_MAX_SIZE = 10 * 1024 * 1024


def looks_binary(sample: bytes) -> bool:
    """A NUL byte, or bytes that are not UTF-8 (a multi-byte character cut by the 512-byte sample is fine)."""
    if b"\0" in sample:
        return True
    for cut in range(4):
        try:
            sample[: len(sample) - cut].decode("utf-8")
            return False
        except UnicodeDecodeError:
            continue
    return True


def upload_mode(path: str, size: int, sample: bytes) -> str:
    """"lfs" or "regular", the way the Hub's preupload endpoint decides."""
    name = path.rsplit("/", 1)[-1]
    if size > REGULAR_MAX_SIZE or looks_binary(sample):
        return "lfs"
    if any(fnmatch.fnmatchcase(path if "/" in pat else name, pat) for pat in DEFAULT_LFS_PATTERNS):
        return "lfs"
    return "regular"


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % int((ts % 1) * 1000)


class HubError(Exception):
    """An error answer: HTTP status, optional X-Error-Code, message, extra JSON fields."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra


class UnknownRoute(Exception):
    pass


def _check_repo_path(path: str) -> str:
    """Validate a path inside a repo; return it normalised (no leading slash)."""
    if not isinstance(path, str):
        raise HubError(400, "path must be a string")
    path = path.strip("/")
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\\" in path or "\0" in path:
        raise HubError(400, f"invalid path in repo: {path!r}")
    if parts[0] == ".git":
        raise HubError(400, f"path may not be inside .git: {path!r}")
    return path


class HubServer:
    """An in-process Hub server for tests; use it as a context manager."""

    def __init__(
        self,
        root_dir,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "testuser",
        tree_page_size: int = 1000,
    ):
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"HubServer only binds to loopback addresses, not {host!r}")
        self.root_dir = os.path.abspath(os.fspath(root_dir))
        self.host = host
        self.port = port
        self.user = user
        self.tree_page_size = tree_page_size
        self.requests: list[tuple[str, str]] = []
        self.raw_requests: list[dict] = []
        self.unknown_requests: list[tuple[str, str]] = []
        self.faults: list[dict] = []
        self.faults_served: list[tuple[str, str, str]] = []
        self._secret = secrets.token_bytes(16)  # signs the LFS upload URLs
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        os.makedirs(self.root_dir, exist_ok=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HubServer":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"HubServer:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None
            self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def client_env(self, hf_home, token: str | None = "hf_test_dummy", base: dict | None = None) -> dict:
        """An environment for a client process that talks to this server only.

        Starts from ``base`` (default ``os.environ``), drops every ``HF_*``/``HUGGINGFACE_*`` variable, the offline
        switches and the proxy variables (a proxy would swallow loopback traffic), then sets HF_ENDPOINT, HF_HOME,
        HF_TOKEN (if given), HF_HUB_DISABLE_XET=1, and turns off telemetry, progress bars and the datasets download
        counter (which would otherwise ping an S3 host on every ``load_dataset``).

        Note for datasets: also set ``datasets.config.USE_PARQUET_EXPORT = False`` in the client before
        ``load_dataset``, or it asks ``datasets-server.<endpoint host>`` (a name lookup that leaves loopback)."""
        env = dict(os.environ if base is None else base)
        for var in list(env):
            if (
                var.startswith(("HF_", "HUGGINGFACE_"))
                or var == "TRANSFORMERS_OFFLINE"
                or var.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
            ):
                del env[var]
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=os.fspath(hf_home),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_DATASETS_DISABLE_PROGRESS_BARS="1",
            HF_UPDATE_DOWNLOAD_COUNTS="0",
            NO_PROXY="127.0.0.1,localhost,::1",
        )
        if token:
            env["HF_TOKEN"] = token
        return env

    # ------------------------------------------------------------------ fault injection
    def add_fault(
        self,
        kind: str,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        retry_after: int | None = 0,
        after_bytes: int | None = None,
    ) -> dict:
        """Answer the next ``times`` requests (None: every one) whose method is ``method`` (None: any) and whose path
        matches the regex ``path`` with a fault instead of the normal answer:

        - ``"500"``: a 500 Internal Server Error (the request body is read first);
        - ``"429"``: a 429 Too Many Requests with ``Retry-After: retry_after`` (omitted if None);
        - ``"drop"``: read ``after_bytes`` bytes of the body (default: half of Content-Length) then close the
          connection without answering, as a connection lost in the middle of an upload.

        Returns the rule; its ``served`` count says how many requests it hit."""
        if kind not in ("500", "429", "drop"):
            raise ValueError(f"unknown fault kind {kind!r}")
        rule = {"kind": kind, "method": method, "path": path, "times": times, "retry_after": retry_after,
                "after_bytes": after_bytes, "served": 0}
        with self._lock:
            self.faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take_fault(self, method: str, path: str) -> dict | None:
        with self._lock:
            for rule in self.faults:
                if rule["times"] is not None and rule["served"] >= rule["times"]:
                    continue
                if rule["method"] not in (None, method) or not re.search(rule["path"], path):
                    continue
                rule["served"] += 1
                self.faults_served.append((rule["kind"], method, path))
                return rule
        return None

    # ------------------------------------------------------------------ storage
    @staticmethod
    def _type_dir(repo_type: str | None) -> str:
        repo_type = repo_type or "model"
        if repo_type in REPO_TYPES:
            return REPO_TYPES[repo_type]
        if repo_type in REPO_TYPES.values():
            return repo_type
        raise HubError(400, f"invalid repo type {repo_type!r}")

    @staticmethod
    def _split_id(repo_id: str) -> tuple[str, str]:
        parts = repo_id.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") or "\\" in p for p in parts):
            raise HubError(400, f"repo id must be 'namespace/name', got {repo_id!r}")
        return parts[0], parts[1]

    def _branch_dir(self, t: str, repo_id: str, branch: str = "main") -> str:
        if branch == "main":
            return os.path.join(self.root_dir, t, *self._split_id(repo_id))
        return os.path.join(self.root_dir, ".hub", "branches", t, *self._split_id(repo_id), quote(branch, safe=""))

    def repo_dir(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str:
        """The folder holding the files of a branch of a repo (LFS files as their real bytes)."""
        return self._branch_dir(self._type_dir(repo_type), repo_id, revision)

    def _meta_path(self, t: str, repo_id: str) -> str:
        ns, name = self._split_id(repo_id)
        return os.path.join(self.root_dir, ".hub", t, ns, name + ".json")

    def _lfs_path(self, t: str, repo_id: str, oid: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", oid or ""):
            raise HubError(400, f"invalid LFS oid {oid!r}: expected a sha256 in hex")
        return os.path.join(self.root_dir, ".hub", "lfs", t, *self._split_id(repo_id), oid)

    def _load_meta(self, t: str, repo_id: str) -> dict | None:
        try:
            with open(self._meta_path(t, repo_id), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _save_meta(self, t: str, repo_id: str, meta: dict) -> None:
        path = self._meta_path(t, repo_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, path)

    @staticmethod
    def _head(meta: dict, branch: str) -> dict:
        """The record of a branch: sha, history, lfs ({path: sha256}), last_modified. main's sits at the top level."""
        return meta if branch == "main" else meta["branches"][branch]

    def _files(self, t: str, repo_id: str, branch: str = "main") -> dict[str, str]:
        """{repo path: absolute file path} of every file of a branch of the repo."""
        base = self._branch_dir(t, repo_id, branch)
        out = {}
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                out[os.path.relpath(full, base).replace(os.sep, "/")] = full
        return dict(sorted(out.items()))

    @staticmethod
    def _file_entry(rel: str, full: str, lfs_oid: str | None = None) -> dict:
        """A tree entry; an LFS file's oid is the blob oid of its pointer and it carries an ``lfs`` field."""
        with open(full, "rb") as f:
            data = f.read()
        if lfs_oid is None:
            return {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": rel}
        pointer = lfs_pointer(lfs_oid, len(data))
        return {"type": "file", "oid": git_blob_oid(pointer), "size": len(data), "path": rel,
                "lfs": {"oid": lfs_oid, "size": len(data), "pointerSize": len(pointer)}}

    def _commit(self, t: str, repo_id: str, meta: dict, summary: str, description: str = "",
                branch: str = "main") -> str:
        """Record a new commit of the branch's current files; return its sha."""
        head = self._head(meta, branch)
        files = self._files(t, repo_id, branch)
        h = hashlib.sha1()
        h.update(f"{t}/{repo_id}@{branch}\n{meta['counter'] + 1}\n{head.get('sha') or ''}\n{summary}\n".encode())
        for rel, full in files.items():
            with open(full, "rb") as f:
                h.update(rel.encode() + b"\0" + git_blob_oid(f.read()).encode() + b"\n")
        sha = h.hexdigest()
        now = time.time()
        meta["counter"] += 1
        head["sha"] = sha
        head["last_modified"] = now
        head.setdefault("history", []).insert(
            0,
            {"id": sha, "title": summary, "message": description or "", "date": _iso(now)},
        )
        self._save_meta(t, repo_id, meta)
        return sha

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> tuple[bool, str]:
        """Create an empty repo (one initial commit). Returns (created, head sha)."""
        t = self._type_dir(repo_type)
        with self._lock:
            meta = self._load_meta(t, repo_id)
            if meta is not None:
                return False, meta["sha"]
            os.makedirs(self._branch_dir(t, repo_id), exist_ok=True)
            meta = {"counter": 0, "sha": None, "private": bool(private), "created_at": time.time(), "history": [],
                    "lfs": {}, "branches": {}}
            return True, self._commit(t, repo_id, meta, "initial commit")

    def create_branch(self, repo_id: str, branch: str, repo_type: str = "model", starting_point: str = "main") -> str:
        """Create ``branch`` at the head of ``starting_point`` (a branch or a branch head sha); return its sha."""
        t = self._type_dir(repo_type)
        with self._lock:
            meta = self._load_meta(t, repo_id)
            if meta is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            if not branch or branch == "main" or branch in meta.setdefault("branches", {}) or ".." in branch \
                    or branch.startswith(("/", "refs/")) or "\\" in branch:
                raise HubError(409 if branch == "main" or branch in meta["branches"] else 400,
                               f"Reference {branch!r} already exists or is not a valid branch name")
            source = self._check_revision(meta, starting_point)
            src = self._head(meta, source)
            dst = self._branch_dir(t, repo_id, branch)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            shutil.copytree(self._branch_dir(t, repo_id, source), dst)
            meta["branches"][branch] = {"sha": src["sha"], "history": list(src.get("history", [])),
                                        "lfs": dict(src.get("lfs", {})), "last_modified": time.time()}
            self._save_meta(t, repo_id, meta)
            return src["sha"]

    def seed_repo(
        self, repo_id: str, folder, repo_type: str = "model", private: bool = False, message: str = "Seed repo"
    ) -> str:
        """Store a local folder as the whole content of a repo's main branch (created if needed); return the new
        commit sha.

        ``.git`` folders are skipped; existing files of the repo are replaced; every file is stored as regular."""
        t = self._type_dir(repo_type)
        folder = os.fspath(folder)
        with self._lock:
            self.create_repo(repo_id, repo_type=repo_type, private=private)
            base = self._branch_dir(t, repo_id)
            shutil.rmtree(base)
            shutil.copytree(folder, base, ignore=shutil.ignore_patterns(".git"))
            meta = self._load_meta(t, repo_id)
            meta["lfs"] = {}
            return self._commit(t, repo_id, meta, message)

    def repo_sha(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str | None:
        """Head commit sha of a branch of a repo, or None if the repo or the branch does not exist."""
        meta = self._load_meta(self._type_dir(repo_type), repo_id)
        if meta is None or (revision != "main" and revision not in meta.get("branches", {})):
            return None
        return self._head(meta, revision)["sha"]

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return self.repo_sha(repo_id, repo_type) is not None

    def repo_private(self, repo_id: str, repo_type: str = "model") -> bool | None:
        """The repo's visibility as stored (None if it does not exist)."""
        meta = self._load_meta(self._type_dir(repo_type), repo_id)
        return None if meta is None else bool(meta.get("private"))

    def lfs_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, str]:
        """{path: sha256} of the files of a branch that are stored through LFS."""
        meta = self._load_meta(self._type_dir(repo_type), repo_id)
        return {} if meta is None else dict(self._head(meta, revision).get("lfs", {}))

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        """How many commits the repo has, all branches together (the initial commit included)."""
        meta = self._load_meta(self._type_dir(repo_type), repo_id)
        return 0 if meta is None else meta["counter"]

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[dict]:
        """The history of a branch, newest first: [{"id", "title", "message", "date"}]."""
        meta = self._load_meta(self._type_dir(repo_type), repo_id)
        return [] if meta is None else list(self._head(meta, revision).get("history", []))

    # ------------------------------------------------------------------ request helpers
    def _repo_url(self, t: str, repo_id: str) -> str:
        return f"{self.endpoint}/{URL_PREFIX[t]}{repo_id}"

    def _get_repo(self, t: str, repo_id: str, authorized: bool) -> dict:
        meta = self._load_meta(t, repo_id)
        if meta is None or (meta.get("private") and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        meta.setdefault("branches", {})
        meta.setdefault("lfs", {})
        return meta

    @staticmethod
    def _check_revision(meta: dict, rev: str) -> str:
        """The branch a revision names (a branch, refs/heads/<branch>, or a branch's head sha)."""
        rev = unquote(rev)
        name = rev[len("refs/heads/"):] if rev.startswith("refs/heads/") else rev
        branches = meta.get("branches", {})
        if name == "main" or rev == meta["sha"]:
            return "main"
        if name in branches:
            return name
        for branch, head in branches.items():
            if rev == head["sha"]:
                return branch
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _tree_entries(self, t: str, repo_id: str, prefix: str, recursive: bool, meta: dict,
                      branch: str = "main") -> list[dict]:
        files = self._files(t, repo_id, branch)
        lfs = self._head(meta, branch).get("lfs", {})
        if prefix:
            if prefix in files:
                raise HubError(404, f"{prefix} is a file, not a folder", "EntryNotFound")
            if not any(p.startswith(prefix + "/") for p in files):
                raise HubError(404, f"{prefix} does not exist on \"{branch}\"", "EntryNotFound")
        start = prefix + "/" if prefix else ""
        dirs: dict[str, list[str]] = {}
        entries = []
        for rel, full in files.items():
            if not rel.startswith(start):
                continue
            rest = rel[len(start):].split("/")
            # every folder between the prefix and the file
            for i in range(1, len(rest)):
                d = start + "/".join(rest[:i])
                dirs.setdefault(d, []).append(rel)
            if recursive or len(rest) == 1:
                entries.append(self._file_entry(rel, full, lfs.get(rel)))
        for d, members in dirs.items():
            if recursive or "/" not in d[len(start):]:
                oid = hashlib.sha1(("tree\0" + "\n".join(sorted(members))).encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        entries.sort(key=lambda e: e["path"])
        return entries

    def _path_info(self, t: str, repo_id: str, path: str, meta: dict, branch: str = "main") -> dict | None:
        files = self._files(t, repo_id, branch)
        path = path.strip("/")
        if path in files:
            return self._file_entry(path, files[path], self._head(meta, branch).get("lfs", {}).get(path))
        members = sorted(p for p in files if p.startswith(path + "/"))
        if path and members:
            oid = hashlib.sha1(("tree\0" + "\n".join(members)).encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": path}
        return None

    def _with_last_commit(self, entry: dict, meta: dict, branch: str = "main") -> dict:
        head = self._head(meta, branch)
        h = head["history"][0] if head.get("history") else {"id": head["sha"], "title": "", "date": _iso(0)}
        return {**entry, "lastCommit": {"id": h["id"], "title": h["title"], "date": h["date"]}}

    def _repo_info(self, t: str, repo_id: str, meta: dict, query: dict, branch: str = "main") -> dict:
        ns, name = self._split_id(repo_id)
        head = self._head(meta, branch)
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for rel, full in self._files(t, repo_id, branch).items():
            s = {"rfilename": rel}
            if blobs:
                e = self._file_entry(rel, full, head.get("lfs", {}).get(rel))
                s.update(size=e["size"], blobId=e["oid"])
                if "lfs" in e:
                    s["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": e["lfs"]["pointerSize"]}
            siblings.append(s)
        info = {
            "_id": hashlib.sha1(f"{t}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": ns,
            "sha": head["sha"],
            "lastModified": _iso(head.get("last_modified", meta["created_at"])),
            "createdAt": _iso(meta["created_at"]),
            "private": bool(meta.get("private")),
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if t == "models":
            info["modelId"] = repo_id
        return info

    # ------------------------------------------------------------------ LFS
    def _upload_signature(self, t: str, repo_id: str, oid: str, size: int) -> str:
        return hmac.new(self._secret, f"{t}/{repo_id}/{oid}/{size}".encode(), hashlib.sha256).hexdigest()

    def _lfs_batch(self, t: str, repo_id: str, meta: dict, payload: dict) -> dict:
        if payload.get("operation") != "upload":
            raise HubError(400, "this test Hub server only answers LFS batch uploads (operation 'upload')")
        transfers = payload.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise HubError(400, f"no transfer this server speaks among {transfers} (it speaks 'basic')")
        if payload.get("ref"):
            self._check_revision(meta, payload["ref"].get("name") or "main")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(size, int) or size < 0:
                raise HubError(400, f"invalid size for LFS object {oid!r}")
            path = self._lfs_path(t, repo_id, oid)
            answer = {"oid": oid, "size": size, "authenticated": True}
            if not (os.path.isfile(path) and os.path.getsize(path) == size):
                sig = self._upload_signature(t, repo_id, oid, size)
                answer["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-upload/{t}/{repo_id}/{oid}?size={size}&sig={sig}",
                               "expires_in": 900},
                    "verify": {"href": f"{self._repo_url(t, repo_id)}.git/info/lfs/objects/verify",
                               "expires_in": 900},
                }
            objects.append(answer)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def _lfs_store(self, t: str, repo_id: str, oid: str, query: dict, body: bytes) -> None:
        try:
            size = int(query.get("size", [""])[0])
        except ValueError:
            raise HubError(400, "missing size in the upload URL")
        if not hmac.compare_digest(query.get("sig", [""])[0], self._upload_signature(t, repo_id, oid, size)):
            raise HubError(403, "bad signature on the LFS upload URL")
        if len(body) != size:
            raise HubError(400, f"LFS upload of {oid}: got {len(body)} bytes, the batch announced {size}")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"LFS upload: the bytes' sha256 is not {oid}")
        path = self._lfs_path(t, repo_id, oid)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)

    def _lfs_verify(self, t: str, repo_id: str, payload: dict) -> None:
        oid, size = payload.get("oid"), payload.get("size")
        path = self._lfs_path(t, repo_id, oid)
        if not os.path.isfile(path):
            raise HubError(404, f"LFS object {oid} was not uploaded")
        if os.path.getsize(path) != size:
            raise HubError(422, f"LFS object {oid} has size {os.path.getsize(path)}, not {size}")

    # ------------------------------------------------------------------ commits
    def _apply_commit(self, t: str, repo_id: str, meta: dict, body: bytes, query: dict, branch: str = "main") -> dict:
        if query.get("create_pr", ["0"])[0] not in ("0", "", "false"):
            raise HubError(400, "this test Hub server does not support pull requests (create_pr)")
        head = self._head(meta, branch)
        header: dict = {}
        ops: list[tuple[str, str, bytes | None, str | None]] = []
        for n, line in enumerate(body.splitlines()):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise HubError(400, f"commit payload line {n + 1} is not a {{key, value}} JSON object")
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                try:
                    content = base64.b64decode(value.get("content", ""), validate=True)
                except (ValueError, TypeError):
                    raise HubError(400, f"bad base64 content for {value.get('path')!r}")
                ops.append(("add", _check_repo_path(value.get("path")), content, None))
            elif key == "lfsFile":
                path = _check_repo_path(value.get("path"))
                if value.get("algo", "sha256") != "sha256":
                    raise HubError(400, f"unsupported LFS algo {value.get('algo')!r} for {path!r}")
                oid = value.get("oid")
                stored = self._lfs_path(t, repo_id, oid)
                if not os.path.isfile(stored):
                    raise HubError(422, f"lfsFile {path!r}: LFS object {oid} was never uploaded")
                with open(stored, "rb") as f:
                    content = f.read()
                if len(content) != value.get("size"):
                    raise HubError(422, f"lfsFile {path!r}: size {value.get('size')} but the object has {len(content)}")
                ops.append(("add", path, content, oid))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, _check_repo_path(value.get("path")), None, None))
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        summary = header.get("summary") or "Upload files"
        parent = header.get("parentCommit")
        if parent and parent != head["sha"]:
            raise HubError(412, f"parentCommit {parent} is not the head of {branch} ({head['sha']})")

        # Validate every operation against the simulated file set before touching the disk.
        paths = set(self._files(t, repo_id, branch))
        for kind, path, _, _ in ops:
            if kind == "add":
                if any(path.startswith(p + "/") for p in paths) or path in {
                    q.rsplit("/", i)[0] for q in paths for i in range(1, q.count("/") + 1)
                }:
                    raise HubError(400, f"cannot add {path!r}: it clashes with an existing file or folder")
                paths.add(path)
            elif kind == "deletedFile":
                if path not in paths:
                    raise HubError(404, f"cannot delete {path!r}: no such file", "EntryNotFound")
                paths.discard(path)
            else:
                inside = {p for p in paths if p.startswith(path + "/")}
                if not inside:
                    raise HubError(404, f"cannot delete folder {path!r}: no such folder", "EntryNotFound")
                paths -= inside

        base = self._branch_dir(t, repo_id, branch)
        lfs = head.setdefault("lfs", {})
        for kind, path, content, oid in ops:
            full = os.path.join(base, *path.split("/"))
            if kind == "add":
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(content)
                if oid is None:
                    lfs.pop(path, None)
                else:
                    lfs[path] = oid
            elif kind == "deletedFile":
                os.remove(full)
                lfs.pop(path, None)
            else:
                shutil.rmtree(full)
                for p in [p for p in lfs if p.startswith(path + "/")]:
                    del lfs[p]
        # drop folders left empty
        for dirpath, _dirnames, _filenames in sorted(os.walk(base), key=lambda w: -len(w[0])):
            if dirpath != base and not os.listdir(dirpath):
                os.rmdir(dirpath)
        sha = self._commit(t, repo_id, meta, summary, header.get("description") or "", branch)
        return {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self._repo_url(t, repo_id)}/commit/{sha}",
            "hookOutput": "",
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer  # set by HubServer.start
    timeout = 60  # idle keep-alive connections end by themselves

    def log_message(self, format, *args):  # noqa: A002 - signature from BaseHTTPRequestHandler
        logger.debug("%s - %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubError):
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message, **err.extra}, headers)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and len(auth) > len("Bearer ")

    def _require_write(self):
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _handle(self):
        hub = self.server_hub
        split = urlsplit(self.path)
        with hub._lock:
            hub.requests.append((self.command, split.path))
        fault = hub._take_fault(self.command, split.path)
        if fault is not None and fault["kind"] == "drop":
            return self._drop(fault)
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        with hub._lock:
            hub.raw_requests.append({"method": self.command, "target": self.path,
                                     "headers": list(self.headers.items()), "body": body})
        if fault is not None:
            headers = {"X-Error-Message": f"injected fault {fault['kind']}"}
            if fault["kind"] == "429" and fault["retry_after"] is not None:
                headers["Retry-After"] = str(fault["retry_after"])
            status = int(fault["kind"])
            return self._json(status, {"error": f"injected fault: {status}"}, headers)
        query = parse_qs(split.query, keep_blank_values=True)
        try:
            self._route(split.path, query, body)
        except HubError as err:
            self._error(err)
        except UnknownRoute:
            logger.warning("hub_server: unknown route %s %s", self.command, self.path)
            with hub._lock:
                hub.unknown_requests.append((self.command, split.path))
            self._json(404, {"error": f"unknown route {self.command} {split.path}"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a server bug: answer 500 rather than hang the client
            logger.exception("hub_server: error on %s %s", self.command, self.path)
            try:
                self._json(500, {"error": f"test hub server error: {exc!r}"})
            except OSError:
                self.close_connection = True

    def _drop(self, fault: dict):
        """Read part of the request body, then cut the connection (RST) without an answer."""
        length = int(self.headers.get("Content-Length") or 0)
        n = fault["after_bytes"] if fault["after_bytes"] is not None else length // 2
        try:
            partial = self.rfile.read(min(n, length)) if n else b""
        except OSError:
            partial = b""
        with self.server_hub._lock:
            self.server_hub.raw_requests.append({"method": self.command, "target": self.path,
                                                 "headers": list(self.headers.items()), "body": partial})
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    # ------------------------------------------------------------------ routing
    def _route(self, raw_path: str, query: dict, body: bytes):
        hub = self.server_hub
        m = self.command
        seg = [unquote(s) for s in raw_path.split("/")[1:]]
        if seg and seg[-1] == "" and len(seg) > 1:
            seg = seg[:-1]

        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["repos", "create"] and m == "POST":
                return self._create(body)
            if rest == ["repos", "delete"] and m == "DELETE":
                return self._delete(body)
            if rest == ["validate-yaml"] and m == "POST":
                return self._json(200, {})
            if rest == ["agent-harnesses"] and m == "GET":  # huggingface_hub's agent detection registry
                return self._json(200, {"standardEnvVars": [], "harnesses": {}})
            if rest == ["whoami-v2"] and m == "GET":
                if not self._authorized():
                    raise HubError(401, "Invalid credentials in Authorization header")
                return self._json(
                    200,
                    {
                        "type": "user",
                        "id": "0" * 24,
                        "name": hub.user,
                        "fullname": hub.user,
                        "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                    },
                )
            if len(rest) >= 3 and rest[0] in URL_PREFIX:
                return self._repo_api(rest[0], f"{rest[1]}/{rest[2]}", rest[3:], query, body)
            raise UnknownRoute

        # the signed LFS upload URL (what S3 is for the real Hub): PUT /lfs-upload/{t}/{ns}/{name}/{oid}?size=&sig=
        if len(seg) == 5 and seg[0] == "lfs-upload" and seg[1] in URL_PREFIX and m == "PUT":
            t, repo_id, oid = seg[1], f"{seg[2]}/{seg[3]}", seg[4]
            with hub._lock:
                if hub._load_meta(t, repo_id) is None:
                    raise HubError(404, "Repository not found", "RepoNotFound")
            hub._lfs_store(t, repo_id, oid, query, body)
            return self._send(200, b"", content_type="text/plain")

        # /{P}{ns}/{name}/resolve/{rev}/{path} and /{P}{ns}/{name}.git/info/lfs/objects/{batch|verify}
        t = "models"
        if seg[:1] and seg[0] in ("datasets", "spaces"):
            t, seg = seg[0], seg[1:]
        if len(seg) >= 5 and seg[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve(t, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        if len(seg) == 6 and seg[1].endswith(".git") and seg[2:5] == ["info", "lfs", "objects"] and m == "POST":
            repo_id = f"{seg[0]}/{seg[1][: -len('.git')]}"
            self._require_write()
            with hub._lock:
                meta = hub._get_repo(t, repo_id, True)
                try:
                    payload = json.loads(body or b"{}")
                except ValueError:
                    raise HubError(400, "body must be JSON")
                if seg[5] == "batch":
                    return self._send(200, json.dumps(hub._lfs_batch(t, repo_id, meta, payload)).encode(),
                                      content_type="application/vnd.git-lfs+json")
                if seg[5] == "verify":
                    hub._lfs_verify(t, repo_id, payload)
                    return self._json(200, {})
        raise UnknownRoute

    def _create(self, body: bytes):
        hub = self.server_hub
        self._require_write()
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise HubError(400, "body must be JSON")
        name = payload.get("name")
        if not name:
            raise HubError(400, "name is required")
        repo_id = f"{payload.get('organization') or hub.user}/{name}"
        repo_type = payload.get("type") or "model"
        private = payload.get("private")
        if private is None:
            private = payload.get("visibility") == "private"
        t = hub._type_dir(repo_type)
        hub._split_id(repo_id)
        created, _sha = hub.create_repo(repo_id, repo_type=t, private=bool(private))
        url = hub._repo_url(t, repo_id)
        if not created:
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        self._json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()[:24]})

    def _delete(self, body: bytes):
        hub = self.server_hub
        self._require_write()
        payload = json.loads(body or b"{}")
        repo_id = f"{payload.get('organization') or hub.user}/{payload.get('name')}"
        t = hub._type_dir(payload.get("type") or "model")
        with hub._lock:
            if hub._load_meta(t, repo_id) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            for folder in (os.path.join(hub.root_dir, t, *hub._split_id(repo_id)),
                           os.path.join(hub.root_dir, ".hub", "branches", t, *hub._split_id(repo_id)),
                           os.path.join(hub.root_dir, ".hub", "lfs", t, *hub._split_id(repo_id))):
                shutil.rmtree(folder, ignore_errors=True)
            os.remove(hub._meta_path(t, repo_id))
        self._json(200, {})

    def _repo_api(self, t: str, repo_id: str, rest: list[str], query: dict, body: bytes):
        hub = self.server_hub
        m = self.command
        with hub._lock:
            meta = hub._get_repo(t, repo_id, self._authorized())
            action = rest[0] if rest else None

            if m == "GET" and (not rest or action == "revision"):
                branch = "main"
                if action == "revision":
                    if len(rest) < 2:
                        raise UnknownRoute
                    branch = hub._check_revision(meta, "/".join(rest[1:]))
                return self._json(200, hub._repo_info(t, repo_id, meta, query, branch))

            if m == "GET" and action == "tree" and len(rest) >= 2:
                branch = hub._check_revision(meta, rest[1])
                prefix = "/".join(rest[2:]).strip("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
                entries = hub._tree_entries(t, repo_id, prefix, recursive, meta, branch)
                if expand:
                    entries = [hub._with_last_commit(e, meta, branch) for e in entries]
                try:
                    start = int(query.get("cursor", ["0"])[0] or 0)
                    limit = int(query.get("limit", [str(hub.tree_page_size)])[0])
                except ValueError:
                    raise HubError(400, "bad cursor or limit")
                limit = max(1, min(limit, hub.tree_page_size))
                page = entries[start : start + limit]
                headers = {}
                if start + limit < len(entries):
                    qs = {k: v[0] for k, v in query.items() if k not in ("cursor",)}
                    qs["cursor"] = str(start + limit)
                    nxt = (
                        f"{hub.endpoint}{quote(urlsplit(self.path).path, safe='/%')}?"
                        + "&".join(f"{quote(k)}={quote(v)}" for k, v in qs.items())
                    )
                    headers["Link"] = f'<{nxt}>; rel="next"'
                return self._json(200, page, headers)

            if m == "POST" and action == "paths-info" and len(rest) >= 2:
                branch = hub._check_revision(meta, "/".join(rest[1:]))
                ctype = self.headers.get("Content-Type", "")
                if "json" in ctype:
                    payload = json.loads(body or b"{}")
                    paths = payload.get("paths", [])
                    expand = bool(payload.get("expand"))
                else:
                    form = parse_qs(body.decode(), keep_blank_values=True)
                    paths = form.get("paths", [])
                    expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
                out = []
                for p in [paths] if isinstance(paths, str) else paths:
                    e = hub._path_info(t, repo_id, p, meta, branch)
                    if e is not None:
                        out.append(hub._with_last_commit(e, meta, branch) if expand else e)
                return self._json(200, out)

            if m == "GET" and action == "refs":
                branches = [{"name": "main", "ref": "refs/heads/main", "targetCommit": meta["sha"]}] + [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": head["sha"]}
                    for b, head in sorted(meta["branches"].items())
                ]
                return self._json(200, {"branches": branches, "converts": [], "tags": []})

            if m == "POST" and action == "branch" and len(rest) >= 2:
                self._require_write()
                payload = json.loads(body or b"{}")
                branch = "/".join(rest[1:])
                if branch == "main" or branch in meta["branches"]:
                    raise HubError(409, f"Reference refs/heads/{branch} already exists")
                hub.create_branch(repo_id, branch, t, payload.get("startingPoint") or "main")
                return self._json(200, {})

            if m == "GET" and action == "commits" and len(rest) >= 2:
                branch = hub._check_revision(meta, "/".join(rest[1:]))
                commits = [
                    {**c, "authors": [{"user": hub.user}]} for c in hub._head(meta, branch).get("history", [])
                ]
                return self._json(200, commits)

            if m == "POST" and action == "preupload" and len(rest) >= 2:
                self._require_write()
                branch = hub._check_revision(meta, "/".join(rest[1:]))
                payload = json.loads(body or b"{}")
                files = hub._files(t, repo_id, branch)
                lfs = hub._head(meta, branch).get("lfs", {})
                answer = []
                for f in payload.get("files", []):
                    path = f.get("path")
                    try:
                        sample = base64.b64decode(f.get("sample") or "", validate=True)
                    except (ValueError, TypeError):
                        raise HubError(400, f"bad base64 sample for {path!r}")
                    mode = upload_mode(str(path), int(f.get("size") or 0), sample)
                    oid = None
                    if path in lfs:
                        oid = lfs[path] if mode == "lfs" else None
                    elif path in files and mode == "regular":
                        with open(files[path], "rb") as fh:
                            oid = git_blob_oid(fh.read())
                    answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
                return self._json(200, {"files": answer, "commitOid": hub._head(meta, branch)["sha"]})

            if m == "POST" and action == "commit" and len(rest) >= 2:
                self._require_write()
                branch = hub._check_revision(meta, "/".join(rest[1:]))
                return self._json(200, hub._apply_commit(t, repo_id, meta, body, query, branch))

        raise UnknownRoute

    def _resolve(self, t: str, repo_id: str, rev: str, path: str):
        hub = self.server_hub
        with hub._lock:
            meta = hub._get_repo(t, repo_id, self._authorized())
            branch = hub._check_revision(meta, rev)
            files = hub._files(t, repo_id, branch)
            if path not in files:
                raise HubError(404, "Entry not found", "EntryNotFound")
            with open(files[path], "rb") as f:
                data = f.read()
            head = hub._head(meta, branch)
            sha = head["sha"]
            lfs_oid = head.get("lfs", {}).get(path)
        headers = {
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{quote(path.rsplit("/", 1)[-1])}"',
        }
        if lfs_oid is None:
            headers["ETag"] = f'"{git_blob_oid(data)}"'
        else:  # the Hub names an LFS file by its sha256 and the size of the object, not of the pointer
            headers["ETag"] = f'"{git_blob_oid(lfs_pointer(lfs_oid, len(data)))}"'
            headers["X-Linked-Etag"] = f'"{lfs_oid}"'
            headers["X-Linked-Size"] = str(len(data))
        status = 200
        rng = self.headers.get("Range")
        if rng and self.command == "GET" and rng.startswith("bytes=") and "," not in rng:
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            size = len(data)
            try:
                if start_s == "":
                    start, end = max(0, size - int(end_s)), size - 1
                else:
                    start = int(start_s)
                    end = min(int(end_s), size - 1) if end_s else size - 1
            except ValueError:
                start, end = 0, size - 1
            if start >= size and size > 0:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}", **headers})
            if size > 0:
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                data = data[start : end + 1]
                status = 206
        headers["Content-Length"] = str(len(data))
        self._send(status, data, headers, content_type="application/octet-stream")


# Put in front of every client script run in a subprocess: only loopback may be resolved or connected to;
# ARGS (the JSON in argv[1]) and result() carry the test's data in and out.
CLIENT_PRELUDE = textwrap.dedent(
    """
    import ipaddress, json, socket, sys

    def _loopback(host):
        if isinstance(host, bytes):
            host = host.decode()
        if host in ("localhost",):
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False

    _getaddrinfo = socket.getaddrinfo
    def _guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            print(f"BLOCKED non-loopback lookup of {host!r}", file=sys.stderr)
            raise socket.gaierror(socket.EAI_NONAME, f"blocked non-loopback host {host!r}")
        return _getaddrinfo(host, *args, **kwargs)
    socket.getaddrinfo = _guarded_getaddrinfo

    _connect = socket.socket.connect
    def _guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            print(f"BLOCKED non-loopback connect to {address!r}", file=sys.stderr)
            raise ConnectionRefusedError(f"blocked non-loopback address {address!r}")
        return _connect(self, address)
    socket.socket.connect = _guarded_connect

    ARGS = json.loads(sys.argv[1])
    def result(obj):
        print("RESULT:" + json.dumps(obj))
    """
)

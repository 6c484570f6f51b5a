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
        self.unknown_requests: list[tuple[str, str]] = []
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

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> str:
        """The folder holding the files of a repo."""
        ns, name = self._split_id(repo_id)
        return os.path.join(self.root_dir, self._type_dir(repo_type), ns, name)

    def _meta_path(self, t: str, repo_id: str) -> str:
        ns, name = self._split_id(repo_id)
        return os.path.join(self.root_dir, ".hub", t, ns, name + ".json")

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

    def _files(self, t: str, repo_id: str) -> dict[str, str]:
        """{repo path: absolute file path} of every file of the repo."""
        base = os.path.join(self.root_dir, t, *self._split_id(repo_id))
        out = {}
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                out[os.path.relpath(full, base).replace(os.sep, "/")] = full
        return dict(sorted(out.items()))

    def _file_entry(self, rel: str, full: str) -> dict:
        with open(full, "rb") as f:
            data = f.read()
        return {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": rel}

    def _commit(self, t: str, repo_id: str, meta: dict, summary: str, description: str = "") -> str:
        """Record a new commit of the repo's current files; return its sha."""
        files = self._files(t, repo_id)
        h = hashlib.sha1()
        h.update(f"{t}/{repo_id}\n{meta['counter'] + 1}\n{meta.get('sha') or ''}\n{summary}\n".encode())
        for rel, full in files.items():
            with open(full, "rb") as f:
                h.update(rel.encode() + b"\0" + git_blob_oid(f.read()).encode() + b"\n")
        sha = h.hexdigest()
        now = time.time()
        meta["counter"] += 1
        meta["sha"] = sha
        meta["last_modified"] = now
        meta.setdefault("history", []).insert(
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
            os.makedirs(os.path.join(self.root_dir, t, *self._split_id(repo_id)), exist_ok=True)
            meta = {"counter": 0, "sha": None, "private": bool(private), "created_at": time.time(), "history": []}
            return True, self._commit(t, repo_id, meta, "initial commit")

    def seed_repo(
        self, repo_id: str, folder, repo_type: str = "model", private: bool = False, message: str = "Seed repo"
    ) -> str:
        """Store a local folder as the whole content of a repo (created if needed); return the new commit sha.

        ``.git`` folders are skipped; existing files of the repo are replaced."""
        t = self._type_dir(repo_type)
        folder = os.fspath(folder)
        with self._lock:
            self.create_repo(repo_id, repo_type=repo_type, private=private)
            base = self.repo_dir(repo_id, t)
            shutil.rmtree(base)
            shutil.copytree(folder, base, ignore=shutil.ignore_patterns(".git"))
            meta = self._load_meta(t, repo_id)
            return self._commit(t, repo_id, meta, message)

    def repo_sha(self, repo_id: str, repo_type: str = "model") -> str | None:
        """Head commit sha of a repo, or None if it does not exist."""
        meta = self._load_meta(self._type_dir(repo_type), repo_id)
        return None if meta is None else meta["sha"]

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return self.repo_sha(repo_id, repo_type) is not None

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        meta = self._load_meta(self._type_dir(repo_type), repo_id)
        return 0 if meta is None else meta["counter"]

    # ------------------------------------------------------------------ request helpers
    def _repo_url(self, t: str, repo_id: str) -> str:
        return f"{self.endpoint}/{URL_PREFIX[t]}{repo_id}"

    def _get_repo(self, t: str, repo_id: str, authorized: bool) -> dict:
        meta = self._load_meta(t, repo_id)
        if meta is None or (meta.get("private") and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return meta

    @staticmethod
    def _check_revision(meta: dict, rev: str) -> None:
        if rev not in ("main", "refs/heads/main", meta["sha"]):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _tree_entries(self, t: str, repo_id: str, prefix: str, recursive: bool) -> list[dict]:
        files = self._files(t, repo_id)
        if prefix:
            if prefix in files:
                raise HubError(404, f"{prefix} is a file, not a folder", "EntryNotFound")
            if not any(p.startswith(prefix + "/") for p in files):
                raise HubError(404, f"{prefix} does not exist on \"main\"", "EntryNotFound")
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
                entries.append(self._file_entry(rel, full))
        for d, members in dirs.items():
            if recursive or "/" not in d[len(start):]:
                oid = hashlib.sha1(("tree\0" + "\n".join(sorted(members))).encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        entries.sort(key=lambda e: e["path"])
        return entries

    def _path_info(self, t: str, repo_id: str, path: str) -> dict | None:
        files = self._files(t, repo_id)
        path = path.strip("/")
        if path in files:
            return self._file_entry(path, files[path])
        members = sorted(p for p in files if p.startswith(path + "/"))
        if path and members:
            oid = hashlib.sha1(("tree\0" + "\n".join(members)).encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": path}
        return None

    def _with_last_commit(self, entry: dict, meta: dict) -> dict:
        h = meta["history"][0] if meta.get("history") else {"id": meta["sha"], "title": "", "date": _iso(0)}
        return {**entry, "lastCommit": {"id": h["id"], "title": h["title"], "date": h["date"]}}

    def _repo_info(self, t: str, repo_id: str, meta: dict, query: dict) -> dict:
        ns, name = self._split_id(repo_id)
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for rel, full in self._files(t, repo_id).items():
            s = {"rfilename": rel}
            if blobs:
                e = self._file_entry(rel, full)
                s.update(size=e["size"], blobId=e["oid"])
            siblings.append(s)
        info = {
            "_id": hashlib.sha1(f"{t}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": ns,
            "sha": meta["sha"],
            "lastModified": _iso(meta.get("last_modified", meta["created_at"])),
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

    def _apply_commit(self, t: str, repo_id: str, meta: dict, body: bytes, query: dict) -> dict:
        if query.get("create_pr", ["0"])[0] not in ("0", "", "false"):
            raise HubError(400, "this test Hub server does not support pull requests (create_pr)")
        header: dict = {}
        ops: list[tuple[str, str, bytes | None]] = []
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
                ops.append(("add", _check_repo_path(value.get("path")), content))
            elif key == "lfsFile":
                raise HubError(
                    400,
                    "LFS files are not supported by this test Hub server (preupload answers every file 'regular'): "
                    f"got lfsFile {value.get('path')!r}",
                )
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, _check_repo_path(value.get("path")), None))
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        summary = header.get("summary") or "Upload files"
        parent = header.get("parentCommit")
        if parent and parent != meta["sha"]:
            raise HubError(412, f"parentCommit {parent} is not the head of main ({meta['sha']})")

        # Validate every operation against the simulated file set before touching the disk.
        paths = set(self._files(t, repo_id))
        for kind, path, _ in ops:
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

        base = os.path.join(self.root_dir, t, *self._split_id(repo_id))
        for kind, path, content in ops:
            full = os.path.join(base, *path.split("/"))
            if kind == "add":
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(content)
            elif kind == "deletedFile":
                os.remove(full)
            else:
                shutil.rmtree(full)
        # drop folders left empty
        for dirpath, _dirnames, _filenames in sorted(os.walk(base), key=lambda w: -len(w[0])):
            if dirpath != base and not os.listdir(dirpath):
                os.rmdir(dirpath)
        sha = self._commit(t, repo_id, meta, summary, header.get("description") or "")
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
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
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

        # /{P}{ns}/{name}/resolve/{rev}/{path}
        t = "models"
        if seg[:1] and seg[0] in ("datasets", "spaces"):
            t, seg = seg[0], seg[1:]
        if len(seg) >= 5 and seg[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve(t, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
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
            shutil.rmtree(os.path.join(hub.root_dir, t, *hub._split_id(repo_id)), ignore_errors=True)
            os.remove(hub._meta_path(t, repo_id))
        self._json(200, {})

    def _repo_api(self, t: str, repo_id: str, rest: list[str], query: dict, body: bytes):
        hub = self.server_hub
        m = self.command
        with hub._lock:
            meta = hub._get_repo(t, repo_id, self._authorized())
            action = rest[0] if rest else None

            if m == "GET" and (not rest or action == "revision"):
                if action == "revision":
                    if len(rest) < 2:
                        raise UnknownRoute
                    hub._check_revision(meta, "/".join(rest[1:]))
                return self._json(200, hub._repo_info(t, repo_id, meta, query))

            if m == "GET" and action == "tree" and len(rest) >= 2:
                hub._check_revision(meta, rest[1])
                prefix = "/".join(rest[2:]).strip("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
                entries = hub._tree_entries(t, repo_id, prefix, recursive)
                if expand:
                    entries = [hub._with_last_commit(e, meta) for e in entries]
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
                hub._check_revision(meta, "/".join(rest[1:]))
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
                    e = hub._path_info(t, repo_id, p)
                    if e is not None:
                        out.append(hub._with_last_commit(e, meta) if expand else e)
                return self._json(200, out)

            if m == "GET" and action == "refs":
                return self._json(
                    200,
                    {
                        "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": meta["sha"]}],
                        "converts": [],
                        "tags": [],
                    },
                )

            if m == "GET" and action == "commits" and len(rest) >= 2:
                hub._check_revision(meta, "/".join(rest[1:]))
                commits = [
                    {**c, "authors": [{"user": hub.user}]} for c in meta.get("history", [])
                ]
                return self._json(200, commits)

            if m == "POST" and action == "preupload" and len(rest) >= 2:
                self._require_write()
                hub._check_revision(meta, "/".join(rest[1:]))
                payload = json.loads(body or b"{}")
                files = hub._files(t, repo_id)
                answer = []
                for f in payload.get("files", []):
                    path = f.get("path")
                    oid = None
                    if path in files:
                        with open(files[path], "rb") as fh:
                            oid = git_blob_oid(fh.read())
                    answer.append({"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
                return self._json(200, {"files": answer, "commitOid": meta["sha"]})

            if m == "POST" and action == "commit" and len(rest) >= 2:
                self._require_write()
                hub._check_revision(meta, "/".join(rest[1:]))
                return self._json(200, hub._apply_commit(t, repo_id, meta, body, query))

        raise UnknownRoute

    def _resolve(self, t: str, repo_id: str, rev: str, path: str):
        hub = self.server_hub
        with hub._lock:
            meta = hub._get_repo(t, repo_id, self._authorized())
            hub._check_revision(meta, rev)
            files = hub._files(t, repo_id)
            if path not in files:
                raise HubError(404, "Entry not found", "EntryNotFound")
            with open(files[path], "rb") as f:
                data = f.read()
            sha = meta["sha"]
        oid = git_blob_oid(data)
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{oid}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{quote(path.rsplit("/", 1)[-1])}"',
        }
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

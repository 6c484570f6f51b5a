"""The loopback Hub server (tests/hub_server.py) against the real client libraries.

huggingface_hub reads HF_ENDPOINT once, at import, into ``huggingface_hub.constants.ENDPOINT`` (and datasets into
``datasets.config.HF_ENDPOINT``). So the end-to-end checks run the client code in a fresh Python subprocess whose
environment (set here with monkeypatch) points at the server; nothing leaks between tests and the already-imported
modules of the test process are never patched. The subprocess also refuses any connection or name lookup that is
not loopback, so a client that tries another host fails loudly instead of reaching out.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest


from hub_server import CLIENT_PRELUDE, HubServer, git_blob_oid

PYTHON = sys.executable

_GUARD = CLIENT_PRELUDE


def run_client(code: str, args: dict, timeout: float = 120) -> dict:
    """Run client code in a fresh interpreter with the current (monkeypatched) environment."""
    script = _GUARD + textwrap.dedent(code)
    proc = subprocess.run(
        [PYTHON, "-c", script, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
    assert "BLOCKED" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, f"client failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT:")]
    assert lines, f"client printed no result:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT:"):])


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with HubServer(tmp_path / "hub") as server:
        env = server.client_env(tmp_path / "hf", token="hf_test_dummy")
        for var in list(os.environ):
            if var not in env:
                monkeypatch.delenv(var)  # HF_HUB_OFFLINE, other HF_* and proxy variables
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_ENDPOINT"] == server.endpoint
        yield server
        assert server.unknown_requests == [], f"client called routes the server does not know: {server.unknown_requests}"


def _tree(folder):
    out = {}
    for dirpath, _dirs, files in os.walk(folder):
        for fn in files:
            full = os.path.join(dirpath, fn)
            out[os.path.relpath(full, folder).replace(os.sep, "/")] = open(full, "rb").read()
    return out


# ---------------------------------------------------------------------------------------------- (a) models
@pytest.mark.slow
def test_upload_folder_then_snapshot_and_file_download(hub, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "README.md").write_text("---\nlicense: mit\ntags:\n- ddpm\n---\n# Tiny model\n")
    (src / "config.json").write_text(json.dumps({"sample_size": 8, "in_channels": 3}))
    (src / "sub" / "weights.bin").write_bytes(os.urandom(100 * 1024))

    out = run_client(
        """
        import os
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        api = HfApi()
        url = api.create_repo("alice/tiny-model")
        again = api.create_repo("alice/tiny-model", exist_ok=True)
        info = api.upload_folder(repo_id="alice/tiny-model", folder_path=ARGS["src"], commit_message="add files")
        snap = snapshot_download("alice/tiny-model", local_dir=ARGS["dst"])
        one = hf_hub_download("alice/tiny-model", "sub/weights.bin")
        files = sorted(api.list_repo_files("alice/tiny-model"))
        result({"url": str(url), "again": str(again), "oid": info.oid, "snap": snap, "one": one, "files": files})
        """,
        {"src": str(src), "dst": str(tmp_path / "dst")},
    )
    assert out["url"] == f"{hub.endpoint}/alice/tiny-model" == out["again"]
    assert out["oid"] == hub.repo_sha("alice/tiny-model")
    assert hub.commit_count("alice/tiny-model") == 2  # initial commit + upload
    assert out["files"] == ["README.md", "config.json", "sub/weights.bin"]

    uploaded = _tree(src)
    downloaded = {k: v for k, v in _tree(out["snap"]).items() if not k.startswith(".cache/")}
    assert downloaded == uploaded
    assert open(out["one"], "rb").read() == uploaded["sub/weights.bin"]
    assert "/snapshots/" + hub.repo_sha("alice/tiny-model") in out["one"]

    # the client really talked to this server
    assert ("POST", "/api/repos/create") in hub.requests
    assert ("POST", "/api/validate-yaml") in hub.requests
    assert ("POST", "/api/models/alice/tiny-model/commit/main") in hub.requests
    assert ("HEAD", "/alice/tiny-model/resolve/main/sub/weights.bin") in hub.requests
    # the binary file went through Git LFS (batch, PUT, verify), the text files inline
    oid = hashlib.sha256(uploaded["sub/weights.bin"]).hexdigest()
    assert hub.lfs_files("alice/tiny-model") == {"sub/weights.bin": oid}
    assert ("POST", "/alice/tiny-model.git/info/lfs/objects/batch") in hub.requests
    assert ("PUT", f"/lfs-upload/models/alice/tiny-model/{oid}") in hub.requests
    assert ("POST", "/alice/tiny-model.git/info/lfs/objects/verify") in hub.requests


# ---------------------------------------------------------------------------------------------- (b) datasets
@pytest.mark.slow
def test_load_dataset_imagefolder(hub, tmp_path):
    from PIL import Image

    src = tmp_path / "ds"
    for label, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (src / "train" / label).mkdir(parents=True)
        for i in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), color).save(buf, format="PNG")
            (src / "train" / label / f"{i}.png").write_bytes(buf.getvalue())

    out = run_client(
        """
        import datasets
        datasets.config.USE_PARQUET_EXPORT = False  # else it asks a datasets-server.<endpoint host>
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("bob/tiny-images", repo_type="dataset")
        api.upload_folder(repo_id="bob/tiny-images", repo_type="dataset", folder_path=ARGS["src"])
        ds = datasets.load_dataset("bob/tiny-images", split="train")
        labels = ds.features["label"].names
        result({"rows": len(ds), "labels": labels, "size": list(ds[0]["image"].size),
                "counts": {n: sum(1 for x in ds["label"] if x == i) for i, n in enumerate(labels)}})
        """,
        {"src": str(src)},
    )
    assert out["rows"] == 6
    assert out["labels"] == ["cat", "dog"]
    assert out["counts"] == {"cat": 3, "dog": 3}
    assert out["size"] == [8, 8]
    assert any(p.startswith("/api/datasets/bob/tiny-images/") for _, p in hub.requests)
    assert ("GET", "/datasets/bob/tiny-images/resolve/" + hub.repo_sha("bob/tiny-images", "dataset")
            + "/train/cat/0.png") in hub.requests


@pytest.mark.slow
def test_load_dataset_parquet_seeded(hub, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "pq"
    (src / "data").mkdir(parents=True)
    pq.write_table(pa.table({"x": list(range(7)), "y": [f"r{i}" for i in range(7)]}), src / "data" / "train.parquet")
    hub.seed_repo("carol/numbers", src, repo_type="dataset")

    out = run_client(
        """
        import datasets
        datasets.config.USE_PARQUET_EXPORT = False
        ds = datasets.load_dataset("carol/numbers", split="train")
        result({"rows": len(ds), "x": list(ds["x"]), "cols": ds.column_names})
        """,
        {},
    )
    assert out == {"rows": 7, "x": list(range(7)), "cols": ["x", "y"]}


# ---------------------------------------------------------------------------------------------- (c) errors
@pytest.mark.slow
def test_missing_repo_and_missing_file_raise_typed_errors(hub, tmp_path):
    src = tmp_path / "m"
    src.mkdir()
    (src / "config.json").write_text("{}")
    hub.seed_repo("dave/exists", src)

    out = run_client(
        """
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
        got = {}
        def catch(name, fn):
            try:
                fn()
                got[name] = "no error"
            except Exception as e:
                got[name] = type(e).__name__
                got[name + "_is"] = {
                    "repo": isinstance(e, RepositoryNotFoundError),
                    "entry": isinstance(e, EntryNotFoundError),
                    "revision": isinstance(e, RevisionNotFoundError),
                }
        catch("download_no_repo", lambda: hf_hub_download("dave/missing", "config.json"))
        catch("info_no_repo", lambda: HfApi().model_info("dave/missing"))
        catch("snapshot_no_repo", lambda: snapshot_download("dave/missing"))
        catch("download_no_file", lambda: hf_hub_download("dave/exists", "nope.json"))
        catch("download_no_rev", lambda: hf_hub_download("dave/exists", "config.json", revision="v9"))
        catch("dataset_as_model", lambda: hf_hub_download("dave/exists", "config.json", repo_type="dataset"))
        result(got)
        """,
        {},
    )
    for name in ("download_no_repo", "info_no_repo", "snapshot_no_repo", "dataset_as_model"):
        assert out[name + "_is"]["repo"], (name, out)
    assert out["download_no_file_is"]["entry"], out
    assert not out["download_no_file_is"]["repo"], out
    assert out["download_no_rev_is"]["revision"], out


# ---------------------------------------------------------------------------------------------- raw protocol
def _call(hub, method, path, body=None, headers=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(hub.endpoint + path, data=data, method=method,
                                 headers={"Authorization": "Bearer hf_test_dummy", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.slow
def test_protocol_details(tmp_path):
    src = tmp_path / "f"
    (src / "a" / "b").mkdir(parents=True)
    for name in ("x.txt", "a/y.txt", "a/b/z.txt", "a/b/w.txt"):
        (src / name).write_text(name)
    with HubServer(tmp_path / "hub", tree_page_size=2) as hub:
        sha = hub.seed_repo("ns/r", src)

        st, _h, body = _call(hub, "POST", "/api/repos/create", {"name": "r", "organization": "ns"})
        assert st == 409 and json.loads(body)["url"] == f"{hub.endpoint}/ns/r"

        st, h, body = _call(hub, "HEAD", "/ns/r/resolve/main/a/y.txt")
        assert st == 200 and h["X-Repo-Commit"] == sha and h["Content-Length"] == "7"
        assert h["ETag"] == f'"{git_blob_oid(b"a/y.txt")}"'
        st, h, body = _call(hub, "GET", f"/ns/r/resolve/{sha}/a/b/z.txt", headers={"Range": "bytes=2-"})
        assert st == 206 and body == b"b/z.txt"
        for path, code in (("/ns/nope/resolve/main/x.txt", "RepoNotFound"),
                           ("/ns/r/resolve/main/nope.txt", "EntryNotFound"),
                           ("/ns/r/resolve/v1/x.txt", "RevisionNotFound")):
            st, h, _ = _call(hub, "HEAD", path)
            assert (st, h.get("X-Error-Code")) == (404, code), path

        # tree: non-recursive, recursive with pagination through Link headers, path prefix
        st, _h, body = _call(hub, "GET", "/api/models/ns/r/tree/main?limit=10")
        assert st == 200
        assert [(e["type"], e["path"]) for e in json.loads(body)] == [("directory", "a"), ("file", "x.txt")]
        seen, url = [], "/api/models/ns/r/tree/main?recursive=true"
        while url:
            st, h, body = _call(hub, "GET", url)
            seen += [e["path"] for e in json.loads(body)]
            link = h.get("Link")
            url = link[1:link.index(">")][len(hub.endpoint):] if link else None
        assert seen == ["a", "a/b", "a/b/w.txt", "a/b/z.txt", "a/y.txt", "x.txt"]
        st, _h, body = _call(hub, "GET", "/api/models/ns/r/tree/main/a/b")
        assert [e["path"] for e in json.loads(body)] == ["a/b/w.txt", "a/b/z.txt"]
        st, h, _ = _call(hub, "GET", "/api/models/ns/r/tree/main/nope")
        assert (st, h.get("X-Error-Code")) == (404, "EntryNotFound")

        st, _h, body = _call(hub, "POST", "/api/models/ns/r/paths-info/main", b"paths=a&paths=x.txt&paths=zz",
                             {"Content-Type": "application/x-www-form-urlencoded"})
        assert [(e["type"], e["path"]) for e in json.loads(body)] == [("directory", "a"), ("file", "x.txt")]

        # commit: delete a folder, add a file; an lfsFile whose object was never uploaded is refused clearly
        ndjson = b"\n".join(json.dumps(x).encode() for x in (
            {"key": "header", "value": {"summary": "edit", "parentCommit": sha}},
            {"key": "deletedFolder", "value": {"path": "a/b"}},
            {"key": "file", "value": {"path": "n.txt", "content": "aGk=", "encoding": "base64"}},
        ))
        st, _h, body = _call(hub, "POST", "/api/models/ns/r/commit/main", ndjson)
        assert st == 200 and json.loads(body)["commitOid"] == hub.repo_sha("ns/r") != sha
        assert sorted(_tree(hub.repo_dir("ns/r"))) == ["a/y.txt", "n.txt", "x.txt"]
        lfs = json.dumps({"key": "lfsFile", "value": {"path": "big.bin", "algo": "sha256", "oid": "0" * 64,
                                                      "size": 1}}).encode()
        st, _h, body = _call(hub, "POST", "/api/models/ns/r/commit/main", lfs)
        assert st == 422 and b"never uploaded" in body

        st, _h, _ = _call(hub, "GET", "/api/something/else")
        assert st == 404 and hub.unknown_requests == [("GET", "/api/something/else")]
        assert ("HEAD", "/ns/r/resolve/main/a/y.txt") in hub.requests


@pytest.mark.slow
def test_preupload_modes_and_lfs_batch_protocol(tmp_path):
    """preupload answers "lfs" for binary, large or .gitattributes-matched files; the LFS batch API hands out an
    upload (signed, checked against oid and size) and a verify action; the commit's lfsFile resolves to the bytes."""
    import base64

    with HubServer(tmp_path / "hub") as hub:
        hub.create_repo("ns/l")
        weights = b"\x10\x00\x00\x00\x00\x00\x00\x00" + os.urandom(3000)
        text = "caf\u00e9 ".encode() * 200  # UTF-8 text cut mid-character at 512 bytes is still text
        files = [{"path": "w.safetensors", "sample": weights[:512], "size": len(weights)},
                 {"path": "a.json", "sample": b'{"a": 1}', "size": 8},
                 {"path": "t.txt", "sample": text[:511], "size": len(text)},
                 {"path": "huge.txt", "sample": b"abc", "size": 11 * 1024 * 1024},
                 {"path": "x.bin", "sample": b"plain text", "size": 10},
                 {"path": "img.png", "sample": b"\x89PNG\r\n\x1a\n", "size": 8}]
        st, _h, body = _call(hub, "POST", "/api/models/ns/l/preupload/main", {"files": [
            {**f, "sample": base64.b64encode(f["sample"]).decode()} for f in files]})
        assert st == 200
        modes = {f["path"]: f["uploadMode"] for f in json.loads(body)["files"]}
        assert modes == {"w.safetensors": "lfs", "a.json": "regular", "t.txt": "regular", "huge.txt": "lfs",
                         "x.bin": "lfs", "img.png": "lfs"}

        oid = hashlib.sha256(weights).hexdigest()
        st, _h, body = _call(hub, "POST", "/ns/l.git/info/lfs/objects/batch", {
            "operation": "upload", "transfers": ["basic", "multipart"], "hash_algo": "sha256",
            "objects": [{"oid": oid, "size": len(weights)}], "ref": {"name": "main"}})
        assert st == 200
        (obj,) = json.loads(body)["objects"]
        upload, verify = obj["actions"]["upload"]["href"], obj["actions"]["verify"]["href"]
        assert "header" not in obj["actions"]["upload"]  # basic transfer: one PUT, no chunk_size
        # the upload URL is signed: a tampered size or a wrong body is refused, without a token it still works
        path = upload[len(hub.endpoint):]
        put = urllib.request.Request(hub.endpoint + path.replace(f"size={len(weights)}", "size=1"), data=b"x",
                                     method="PUT")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(put, timeout=10)
        assert err.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(upload, data=weights[:-1] + b"!", method="PUT"), timeout=10)
        assert err.value.code == 400
        st, _h, _ = _call(hub, "POST", verify[len(hub.endpoint):], {"oid": oid, "size": len(weights)})
        assert st == 404  # not uploaded yet
        with urllib.request.urlopen(urllib.request.Request(upload, data=weights, method="PUT"), timeout=10) as r:
            assert r.status == 200
        st, _h, _ = _call(hub, "POST", verify[len(hub.endpoint):], {"oid": oid, "size": len(weights)})
        assert st == 200
        # asked again, the stored object needs no action
        st, _h, body = _call(hub, "POST", "/ns/l.git/info/lfs/objects/batch", {
            "operation": "upload", "objects": [{"oid": oid, "size": len(weights)}]})
        assert "actions" not in json.loads(body)["objects"][0]

        ndjson = b"\n".join(json.dumps(x).encode() for x in (
            {"key": "header", "value": {"summary": "weights"}},
            {"key": "lfsFile", "value": {"path": "unet/w.safetensors", "algo": "sha256", "oid": oid,
                                         "size": len(weights)}}))
        st, _h, body = _call(hub, "POST", "/api/models/ns/l/commit/main", ndjson)
        assert st == 200
        assert hub.lfs_files("ns/l") == {"unet/w.safetensors": oid}
        st, h, body = _call(hub, "GET", "/ns/l/resolve/main/unet/w.safetensors")
        assert st == 200 and body == weights
        assert h["X-Linked-Etag"] == f'"{oid}"' and h["X-Linked-Size"] == str(len(weights))
        st, _h, body = _call(hub, "GET", "/api/models/ns/l/tree/main/unet")
        (entry,) = json.loads(body)
        assert entry["lfs"]["oid"] == oid and entry["size"] == len(weights)
        # preupload now names the stored file by its sha256, so an unchanged upload is skipped by the client
        st, _h, body = _call(hub, "POST", "/api/models/ns/l/preupload/main", {"files": [
            {"path": "unet/w.safetensors", "sample": base64.b64encode(weights[:512]).decode(),
             "size": len(weights)}]})
        assert json.loads(body)["files"][0]["oid"] == oid


@pytest.mark.slow
def test_faults_and_branches(tmp_path):
    """Injected faults (500, 429 with Retry-After, a connection cut mid-body) hit only the matching requests, the
    given number of times; branches are created from main and read back by name."""
    import http.client

    src = tmp_path / "f"
    src.mkdir()
    (src / "x.txt").write_text("x")
    with HubServer(tmp_path / "hub") as hub:
        sha = hub.seed_repo("ns/r", src)
        hub.add_fault("500", method="GET", path=r"/revision/", times=1)
        hub.add_fault("429", method="GET", path=r"/tree/", times=2, retry_after=7)
        drop = hub.add_fault("drop", method="POST", path=r"/commit/", times=1)
        st, _h, _ = _call(hub, "GET", "/api/models/ns/r/revision/main")
        assert st == 500
        st, _h, _ = _call(hub, "GET", "/api/models/ns/r/revision/main")
        assert st == 200
        for _ in range(2):
            st, h, _ = _call(hub, "GET", "/api/models/ns/r/tree/main")
            assert (st, h["Retry-After"]) == (429, "7")
        assert _call(hub, "GET", "/api/models/ns/r/tree/main")[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
            conn.request("POST", "/api/models/ns/r/commit/main", body=b"z" * 200_000,
                         headers={"Authorization": "Bearer hf_test_dummy"})
            conn.getresponse()
        assert drop["served"] == 1 and hub.repo_sha("ns/r") == sha
        assert [k for k, _m, _p in hub.faults_served] == ["500", "429", "429", "drop"]
        assert len(hub.raw_requests[-1]["body"]) == 100_000  # half of the body was read before the cut

        st, _h, _ = _call(hub, "POST", "/api/models/ns/r/branch/dev", {})
        assert st == 200 and hub.repo_sha("ns/r", revision="dev") == sha
        assert _call(hub, "POST", "/api/models/ns/r/branch/dev", {})[0] == 409
        ndjson = b"\n".join(json.dumps(x).encode() for x in (
            {"key": "header", "value": {"summary": "on dev"}},
            {"key": "file", "value": {"path": "d.txt", "content": "ZGV2", "encoding": "base64"}}))
        st, _h, body = _call(hub, "POST", "/api/models/ns/r/commit/dev", ndjson)
        dev = json.loads(body)["commitOid"]
        assert st == 200 and hub.repo_sha("ns/r", revision="dev") == dev and hub.repo_sha("ns/r") == sha
        assert _call(hub, "GET", "/ns/r/resolve/dev/d.txt")[2] == b"dev"
        assert _call(hub, "GET", "/ns/r/resolve/refs%2Fheads%2Fdev/d.txt")[2] == b"dev"
        assert _call(hub, "HEAD", "/ns/r/resolve/main/d.txt")[0] == 404
        st, _h, body = _call(hub, "GET", "/api/models/ns/r/refs")
        assert [b["name"] for b in json.loads(body)["branches"]] == ["main", "dev"]

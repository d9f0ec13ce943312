"""A test double of the Hugging Face Hub's HTTP protocol, on 127.0.0.1, so that the real `huggingface_hub`,
`transformers` and `datasets` clients can push, pull and stream without internet (point them at it with
`HF_ENDPOINT`).

It keeps model and dataset repositories in memory: commits (with parents), branches and `refs/pr/N`. It answers only what a push
(`create_repo`, `upload_folder`) and a pull (`from_pretrained`, `hf_hub_download`, `snapshot_download`, `model_info`)
use: repo creation, YAML validation, preupload, LFS batch + PUT, commits (NDJSON), revision / model info, the file
tree, and `resolve` with the headers the client reads (`X-Repo-Commit`, `ETag`, sizes, `X-Error-Code` on 404).
It is not a Hub: no auth, no permissions, no Xet (run clients with `HF_HUB_DISABLE_XET=1`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

REGULAR_LIMIT = 5 * 1024 * 1024  # larger files go through LFS, as on the Hub


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        return self.commits.get(revision)


class HubState:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.requests: list[str] = []

    def create(self, repo_id: str, private: bool) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = Repo(repo_id, private)
            first = Commit(hashlib.sha1(f"init {repo_id}".encode()).hexdigest(), {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit", None)
            repo.commits[first.oid] = first
            repo.refs["main"] = first.oid
            self.repos[repo_id] = repo
            return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set by serve()

    def log_message(self, *args):  # keep test output quiet
        pass

    # ------------------------------------------------------------------ helpers
    def reply(self, status: int, body=b"", headers=None, content_type="application/json"):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str, message: str):
        self.reply(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    @property
    def endpoint(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def route(self):
        url = urlparse(self.path)
        self.state.requests.append(f"{self.command} {url.path}")
        return url.path, parse_qs(url.query)

    def repo_or_404(self, repo_id):
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self.error(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def repo_commit(self, repo_id, revision):
        """(repo, commit) for a revision, or (repo or None, None) after answering 404 with the Hub's error code."""
        repo = self.repo_or_404(repo_id)
        if repo is None:
            return None, None
        commit = repo.resolve(revision)
        if commit is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit

    def model_info(self, repo: Repo, commit: Commit) -> dict:
        return {
            "_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": commit.oid, "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": [], "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    # ------------------------------------------------------------------ verbs
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path, query = self.route()
        if m := re.fullmatch(r"/api/(?:models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            repo, commit = self.repo_commit(m.group(1), m.group(2))
            if commit is None:
                return
            folder = (m.group(3) or "").strip("/")
            prefix = folder + "/" if folder else ""
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries, folders = [], set()
            for p, data in sorted(commit.files.items()):
                if not p.startswith(prefix):
                    continue
                rest = p[len(prefix):]
                if "/" in rest and not recursive:
                    folders.add(prefix + rest.split("/", 1)[0])
                    continue
                entries.append({"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p})
                if recursive:  # the folders on the way, as the Hub lists them
                    parts = rest.split("/")[:-1]
                    folders.update(prefix + "/".join(parts[:i + 1]) for i in range(len(parts)))
            if folder and not entries and not folders:
                return self.error(404, "EntryNotFound", f"{folder} does not exist at {commit.oid}")
            entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                        for f in sorted(folders)]
            return self.reply(200, entries)
        if m := re.fullmatch(r"/api/(?:models|datasets)/([^/]+/[^/]+)(?:/revision/(.+))?", path):
            repo, commit = self.repo_commit(m.group(1), m.group(2) or "main")
            if commit is None:
                return
            return self.reply(200, self.model_info(repo, commit))
        if m := re.fullmatch(r"/(?:datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo, commit = self.repo_commit(m.group(1), m.group(2))
            if commit is None:
                return
            name = unquote(m.group(3))
            if name not in commit.files:
                return self.error(404, "EntryNotFound", f"{name} does not exist at {commit.oid}")
            data = commit.files[name]
            etag = hashlib.sha256(data).hexdigest() if len(data) > REGULAR_LIMIT else git_blob_sha1(data)
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"'}
            if len(data) > REGULAR_LIMIT:
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
            return self.reply(200, data, headers, content_type="application/octet-stream")
        self.error(404, "NotFound", f"no route for GET {path}")

    def do_PUT(self):
        path, _ = self.route()
        if m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path):
            data = self.body()
            if hashlib.sha256(data).hexdigest() != m.group(1):
                return self.error(400, "BadRequest", "sha256 mismatch")
            self.state.lfs[m.group(1)] = data
            return self.reply(200, {})
        self.error(404, "NotFound", f"no route for PUT {path}")

    def do_POST(self):
        path, query = self.route()
        raw = self.body()
        if path == "/api/repos/create":
            payload = json.loads(raw or b"{}")
            organisation = payload.get("organization") or "user"
            repo_id = f"{organisation}/{payload['name']}"
            url = f"{self.endpoint}/{'datasets/' if payload.get('type') == 'dataset' else ''}{repo_id}"
            if not self.state.create(repo_id, bool(payload.get("private"))):
                return self.reply(409, {"error": "You already created this model repo", "url": url})
            return self.reply(200, {"url": url, "name": repo_id, "id": repo_id})
        if path == "/api/validate-yaml":
            return self.reply(200, {"errors": [], "warnings": []})
        if m := re.fullmatch(r"/api/(?:models|datasets)/([^/]+/[^/]+)/preupload/(.+)", path):
            repo = self.repo_or_404(m.group(1))
            if repo is None:
                return
            commit = repo.resolve(m.group(2)) or repo.resolve("main")
            files = []
            for item in json.loads(raw)["files"]:
                mode = "lfs" if item["size"] > REGULAR_LIMIT else "regular"
                existing = commit.files.get(item["path"])
                oid = None
                if existing is not None:
                    oid = hashlib.sha256(existing).hexdigest() if mode == "lfs" else git_blob_sha1(existing)
                files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return self.reply(200, {"files": files})
        if m := re.fullmatch(r"/(?:datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            payload = json.loads(raw)
            objects = []
            for item in payload["objects"]:
                entry = {"oid": item["oid"], "size": item["size"]}
                if item["oid"] not in self.state.lfs:
                    entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{item['oid']}"}}
                objects.append(entry)
            return self.reply(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")
        if m := re.fullmatch(r"/api/(?:models|datasets)/([^/]+/[^/]+)/branch/(.+)", path):
            repo = self.repo_or_404(m.group(1))
            if repo is None:
                return
            branch = unquote(m.group(2))
            if branch in repo.refs:
                return self.error(409, "BranchExists", f"branch {branch} already exists")
            payload = json.loads(raw or b"{}")
            start = repo.resolve(payload.get("startingPoint") or "main")
            repo.refs[branch] = start.oid
            return self.reply(200, {})
        if m := re.fullmatch(r"/api/(?:models|datasets)/([^/]+/[^/]+)/commit/(.+)", path):
            return self.commit(m.group(1), unquote(m.group(2)), raw, query)
        self.error(404, "NotFound", f"no route for POST {path}")

    def commit(self, repo_id, revision, raw, query):
        repo = self.repo_or_404(repo_id)
        if repo is None:
            return
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        with self.state.lock:
            if query.get("create_pr"):
                base = repo.resolve(revision)
                number = 1 + sum(ref.startswith("refs/pr/") for ref in repo.refs)
                branch = f"refs/pr/{number}"
            else:
                if revision not in repo.refs and repo.resolve(revision) is None:
                    repo.refs[revision] = repo.refs["main"]  # a new branch starts from main
                base = repo.resolve(revision)
                branch = revision
            if base is None:
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = dict(base.files)
            for item in lines:
                value = item["value"]
                if item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    files[value["path"]] = self.state.lfs[value["oid"]]
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    files = {p: d for p, d in files.items() if p != value["path"] and not p.startswith(value["path"].rstrip("/") + "/")}
            digest = hashlib.sha1(json.dumps([base.oid, header.get("summary"), sorted(
                (p, git_blob_sha1(d)) for p, d in files.items())]).encode())
            oid = digest.hexdigest()
            repo.commits[oid] = Commit(oid, files, header.get("summary", ""), base.oid)
            repo.refs[branch] = oid
        result = {"success": True, "commitOid": oid, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}"}
        if query.get("create_pr"):
            result["pullRequestUrl"] = f"{self.endpoint}/{repo_id}/discussions/{branch.rsplit('/', 1)[-1]}"
        return self.reply(200, result)


def serve(port: int = 0):
    """Start the server in a thread; returns (server, state, endpoint). Stop it with `server.shutdown()`."""
    state = HubState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state, f"http://127.0.0.1:{server.server_address[1]}"

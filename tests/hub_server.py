"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for tests that push
and load through the real huggingface_hub, datasets and transformers clients.

It fakes the network peer only: the clients run unchanged and talk HTTP to it. It
holds repositories in memory (every commit a snapshot of the files) and answers the
routes those clients call for:

- pushing: ``POST /api/repos/create``, ``POST /api/validate-yaml``,
  ``POST /api/{type}s/{id}/preupload/{rev}`` (every file ``regular``: a real Hub
  sends large and binary files to LFS/Xet storage instead; keep pushed files small),
  ``POST /api/{type}s/{id}/commit/{rev}`` (ndjson, base64 content inline);
- reading: ``GET /api/agent-harnesses`` (an empty registry), ``GET /api/{type}s/{id}[/revision/{rev}]``,
  ``GET /api/{type}s/{id}/tree/{rev}[/{path}]``, ``POST /api/{type}s/{id}/paths-info/{rev}``,
  ``HEAD|GET /[{type}s/]{id}/resolve/{rev}/{path}``.

Writes need a ``Bearer`` token (401 without one, as the Hub answers). A missing repo,
revision or file gets the Hub's 404 with its ``X-Error-Code``, which the clients turn
into their usual errors. Any other route answers 404 and is recorded in
``unhandled``, so a client that starts calling something new fails with its name.

Use the ``hub`` fixture (``tests/conftest.py``): it starts a server per test and
points huggingface_hub, datasets and transformers at it, online, with a fake token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN_USER = "user"  # the namespace a repo id without one is created in
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = re.compile(
    rf"^/api/(?P<kind>models|datasets|spaces)/{_REPO}"
    r"(?:/(?P<action>revision|tree|preupload|commit|paths-info)/(?P<rev>[^/]+)(?P<path>/.*)?)?$"
)
_RESOLVE = re.compile(
    rf"^/(?:(?P<kind>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)


def blob_oid(content: bytes) -> str:
    """git's blob id, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)

    @property
    def files(self) -> dict[str, bytes]:
        """The files at the head of ``main``."""
        return self.commits[-1][1] if self.commits else {}

    def snapshot(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        if rev == "main":
            return self.commits[-1] if self.commits else (_EMPTY_SHA, {})
        return next((c for c in self.commits if c[0] == rev), None)


_EMPTY_SHA = "0" * 40


class HubServer:
    """The server and its state: ``repos`` by ``(repo_type, repo_id)``, ``tokens`` seen
    on writes, ``unhandled`` routes. ``url`` is its endpoint (``http://127.0.0.1:PORT``)."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens: list[str] = []
        self.unhandled: list[str] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """A pushed repository (KeyError naming the ones there)."""
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(
                f"no {repo_type} repo {repo_id!r}; pushed: {sorted(self.repos)}"
            ) from None


def _handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        # -- plumbing -------------------------------------------------------------

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            content_type: str = "application/json",
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(value).encode(), headers)

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._json(status, {"error": message}, headers)

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                self._error(401, None, "Invalid credentials in Authorization header")
                return False
            server.tokens.append(auth[7:].strip())
            return True

        def _repo(self, kind: str | None, repo_id: str) -> Repo | None:
            repo_type = _TYPES.get(kind or "models", "model")
            repo = server.repos.get((repo_type, unquote(repo_id)))
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        def _snapshot(self, m: re.Match) -> tuple[str, dict[str, bytes]] | None:
            """The (commit, files) the route's repo and revision name; None once the
            404 is sent."""
            repo = self._repo(m["kind"], m["repo"])
            if repo is None:
                return None
            rev = unquote(m["rev"] or "main")
            snap = repo.snapshot(rev)
            if snap is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return snap

        # -- routes -----------------------------------------------------------------

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            with server.lock:
                if url.path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry
                    return self._json(200, {"standardEnvVars": [], "harnesses": {}})
                if m := _RESOLVE.match(url.path):
                    return self._resolve(m)
                m = _API.match(url.path)
                if m and m["action"] in (None, "revision"):
                    return self._info(m)
                if m and m["action"] == "tree":
                    return self._tree(m, parse_qs(url.query))
            self._unhandled()

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            body = self._body()
            with server.lock:
                if url.path == "/api/validate-yaml":
                    return self._json(200, {"errors": [], "warnings": []})
                if url.path == "/api/repos/create":
                    return self._create(json.loads(body))
                m = _API.match(url.path)
                if m and m["action"] == "preupload":
                    return self._preupload(m, json.loads(body))
                if m and m["action"] == "commit":
                    return self._commit(m, body)
                if m and m["action"] == "paths-info":
                    return self._paths_info(m, parse_qs(body.decode()))
            self._unhandled()

        def _unhandled(self) -> None:
            server.unhandled.append(f"{self.command} {self.path}")
            self._error(404, None, f"the stand-in Hub has no route {self.command} {self.path}")

        def _create(self, payload: dict[str, Any]) -> None:
            if not self._authorized():
                return
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or TOKEN_USER}/{payload['name']}"
            url = f"{server.url}/{_PREFIX[repo_type]}{repo_id}"
            if (repo_type, repo_id) in server.repos:  # the Hub's 409 names the repo too
                message = f"You already created this {repo_type} repo"
                return self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
            server.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id)
            self._json(200, {"url": url, "name": repo_id})

        def _info(self, m: re.Match) -> None:
            snap = self._snapshot(m)
            if snap is None:
                return
            sha, files = snap
            self._json(
                200,
                {
                    "id": unquote(m["repo"]),
                    "sha": sha,
                    "private": False,
                    "disabled": False,
                    "gated": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "lastModified": "2024-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )

        def _entries(self, files: dict[str, bytes], prefix: str, recursive: bool) -> list:
            """The tree under ``prefix`` ("" is the root): its files and folders, all the
            way down with ``recursive``."""
            base = f"{prefix}/" if prefix else ""
            out: dict[str, dict[str, Any]] = {}
            for path, content in files.items():
                if not path.startswith(base):
                    continue
                parts = path[len(base) :].split("/")
                for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                    folder = base + "/".join(parts[:depth])
                    out.setdefault(folder, {"type": "directory", "path": folder, "oid": _EMPTY_SHA})
                if recursive or len(parts) == 1:
                    out[path] = _file_entry(path, content)
            return [out[p] for p in sorted(out)]

        def _tree(self, m: re.Match, query: dict[str, list[str]]) -> None:
            snap = self._snapshot(m)
            if snap is None:
                return
            files = snap[1]
            path = unquote((m["path"] or "").strip("/"))
            if path and path not in files and not any(p.startswith(path + "/") for p in files):
                return self._error(404, "EntryNotFound", f"{path} does not exist")
            recursive = query.get("recursive", ["False"])[0].lower() in ("true", "1")
            self._json(200, self._entries(files, path, recursive))

        def _paths_info(self, m: re.Match, form: dict[str, list[str]]) -> None:
            snap = self._snapshot(m)
            if snap is None:
                return
            files = snap[1]
            found = []
            for path in form.get("paths", []):
                if path in files:
                    found.append(_file_entry(path, files[path]))
                elif any(p.startswith(path + "/") for p in files):
                    found.append({"type": "directory", "path": path, "oid": _EMPTY_SHA})
            self._json(200, found)

        def _resolve(self, m: re.Match) -> None:
            snap = self._snapshot(m)
            if snap is None:
                return
            sha, files = snap
            path = unquote(m["path"])
            if path not in files:
                return self._error(404, "EntryNotFound", f"{path} does not exist on {m['rev']}")
            content = files[path]
            headers = {"X-Repo-Commit": sha, "ETag": f'"{blob_oid(content)}"'}
            self._send(200, content, headers, content_type="application/octet-stream")

        def _preupload(self, m: re.Match, payload: dict[str, Any]) -> None:
            if not self._authorized() or self._repo(m["kind"], m["repo"]) is None:
                return
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in payload["files"]
            ]
            self._json(200, {"files": files, "commitOid": None})

        def _commit(self, m: re.Match, body: bytes) -> None:
            if not self._authorized():
                return
            repo = self._repo(m["kind"], m["repo"])
            if repo is None:
                return
            if unquote(m["rev"]) != "main":
                return self._error(404, "RevisionNotFound", "commits go to main here")
            files = dict(repo.files)
            summary = ""
            for line in body.decode().splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value["summary"]
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    files.pop(value["path"], None)
                elif item["key"] == "deletedFolder":
                    files = {
                        p: c for p, c in files.items() if not p.startswith(value["path"] + "/")
                    }
                else:  # lfsFile: this stand-in told the client to send every file inline
                    return self._error(400, None, f"unexpected commit item {item['key']!r}")
            digest = hashlib.sha1(summary.encode())
            for path in sorted(files):
                digest.update(path.encode() + b"\0" + blob_oid(files[path]).encode())
            digest.update(str(len(repo.commits)).encode())
            sha = digest.hexdigest()
            repo.commits.append((sha, files))
            url = f"{server.url}/{_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{sha}"
            self._json(200, {"commitUrl": url, "commitOid": sha, "success": True})

    return Handler


def _file_entry(path: str, content: bytes) -> dict[str, Any]:
    return {"type": "file", "path": path, "size": len(content), "oid": blob_oid(content)}

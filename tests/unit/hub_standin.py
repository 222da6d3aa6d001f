"""A local stand-in for the Hugging Face hub's file endpoint, for offline tests of the real download code.

It answers ``HEAD``/``GET /datasets/<repo>/resolve/<revision>/<path>`` the way the hub does for what
``huggingface_hub.hf_hub_download`` needs: ``X-Repo-Commit``, an ``ETag`` that is the content's sha256
for large (LFS) files and the git blob sha1 for small ones, ``Content-Length``, ``Range`` requests,
and a 404 with ``X-Error-Code: EntryNotFound`` for a missing file. Faults are injected per path.

For uploads (``HfApi.create_repo``, ``create_commit``, ``list_repo_files``; the checkpoint mirror) it also
answers ``POST /api/repos/create``, ``POST /api/datasets/<repo>/preupload/<rev>`` (every file "regular",
so no LFS/Xet transfer), ``POST /api/datasets/<repo>/commit/<rev>`` (the ndjson commit: base64 files,
deleted files and folders, applied at once) and ``GET /api/datasets/<repo>/tree/<rev>`` (one page).
``exists=False`` makes the repository absent until it is created; ``commits`` records each commit's paths.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STANDIN_COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".bin", ".model")


def hub_etag(path: str, content: bytes) -> str:
    if path.endswith(LFS_SUFFIXES):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()


@dataclass
class HubStandIn:
    """Files of one dataset repository and the faults to inject. ``gets`` records every GET path."""

    repo_id: str
    files: dict[str, bytes] = field(default_factory=dict)
    # Served with a wrong body (the first N GETs of that path); the etag stays the true one.
    damaged_gets: dict[str, int] = field(default_factory=dict)
    # Served damaged forever (the hub's copy itself is broken): the etag matches the broken bytes.
    broken: dict[str, bytes] = field(default_factory=dict)
    # GETs of these paths send half the body and then hang until ``release`` is set (a transfer in flight
    # when the downloading process is killed).
    stall: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    gets: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    exists: bool = True
    # One entry per commit: [(key, path)] with key "file", "deletedFile" or "deletedFolder".
    commits: list[list[tuple[str, str]]] = field(default_factory=list)

    def apply_commit(self, lines: list[dict]) -> None:
        """Apply an ndjson commit (as ``huggingface_hub`` sends it) to ``files``, all at once."""
        operations = []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                self.files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                self.files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                for name in [name for name in self.files if name.startswith(folder)]:
                    del self.files[name]
            elif key != "header":
                raise ValueError(f"the stand-in does not support commit operation {key!r}")
            if key != "header":
                operations.append((key, value["path"]))
        self.commits.append(operations)

    def content_for(self, path: str, *, for_get: bool) -> bytes | None:
        if path in self.broken:
            return self.broken[path]
        content = self.files.get(path)
        if content is not None and for_get and self.damaged_gets.get(path, 0) > 0:
            self.damaged_gets[path] -= 1
            return content[: len(content) // 2] + b"\xff" * (len(content) - len(content) // 2)
        return content


def _make_handler(hub: HubStandIn):
    pattern = re.compile(rf"^/datasets/{re.escape(hub.repo_id)}/resolve/[^/]+/(.+)$")
    api = re.compile(rf"^/api/datasets/{re.escape(hub.repo_id)}/(preupload|commit|tree)/[^/]+(/.*)?$")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _answer(self, with_body: bool) -> None:
            match = pattern.match(self.path.split("?")[0])
            path = match.group(1) if match else None
            with hub.lock:
                if with_body and path:
                    hub.gets.append(path)
                stalled = with_body and path in hub.stall
                content = hub.content_for(path, for_get=with_body) if path else None
                true_content = hub.broken.get(path, hub.files.get(path)) if path else None
            if content is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound" if match else "RepoNotFound")
                self.send_header("X-Repo-Commit", STANDIN_COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            range_header = self.headers.get("Range")
            if range_header and with_body:
                start = int(re.match(r"bytes=(\d+)-", range_header).group(1))
            body = content[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", STANDIN_COMMIT)
            self.send_header("ETag", f'"{hub_etag(path, true_content)}"')
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
            self.end_headers()
            if stalled:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                hub.release.wait(timeout=60)
                return
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self):
            self._answer(with_body=False)

        def do_GET(self):
            match = api.match(self.path.split("?")[0])
            if match and match.group(1) == "tree":
                with hub.lock:
                    if not hub.exists:
                        return self._json(404, {"error": "Repository not found"}, error_code="RepoNotFound")
                    listing = [{"type": "file", "path": name, "size": len(data), "oid": hub_etag(name, data)}
                               for name, data in sorted(hub.files.items())]
                return self._json(200, listing)
            self._answer(with_body=True)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                request = json.loads(body)
                if f"{request.get('organization')}/{request.get('name')}" != hub.repo_id:
                    return self._json(403, {"error": "not this stand-in's repository"})
                with hub.lock:
                    hub.exists = True
                return self._json(200, {"url": f"http://{self.headers['Host']}/datasets/{hub.repo_id}"})
            match = api.match(path)
            if match is None or not hub.exists:
                return self._json(404, {"error": "Repository not found"}, error_code="RepoNotFound")
            if match.group(1) == "preupload":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files]})
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            with hub.lock:
                hub.apply_commit(lines)
            return self._json(200, {"commitUrl": f"http://{self.headers['Host']}/datasets/{hub.repo_id}/commit/"
                                                 f"{STANDIN_COMMIT}", "commitOid": STANDIN_COMMIT})

        def _json(self, status: int, value, error_code: str | None = None) -> None:
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if error_code:
                self.send_header("X-Error-Code", error_code)
            self.end_headers()
            self.wfile.write(data)

    return Handler


class RunningHub:
    """``with RunningHub(hub) as url:`` serves ``hub`` on a free localhost port."""

    def __init__(self, hub: HubStandIn):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(hub))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

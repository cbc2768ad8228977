"""A local HTTP server standing in for the Hugging Face hub (and for plain https downloads).

Serves `files[(repo_id, revision, filename)] = bytes` at `/{repo_id}/resolve/{revision}/{filename}`
with the headers huggingface_hub reads (commit, etag, size), also under the revision's commit
(`FakeHub.commit(revision)`) as the hub does, and `plain[path] = bytes` at `/path`.
`truncate` makes a path send fewer bytes than its Content-Length says.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.plain: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _lookup(self) -> tuple[bytes | None, str]:
                path = self.path.split("?")[0]
                hub.requests.append(f"{self.command} {path}")
                if path in hub.plain:
                    return hub.plain[path], "main"
                parts = path.lstrip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, asked, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    for (r, revision, f), body in hub.files.items():
                        if (r, f) == (repo, filename) and asked in (revision, FakeHub.commit(revision)):
                            return body, revision
                return None, ""

            def _headers(self, body: bytes, revision: str) -> None:
                self.send_response(200)
                self.send_header("X-Repo-Commit", FakeHub.commit(revision))
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()

            def do_HEAD(self) -> None:
                body, revision = self._lookup()
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                self._headers(body, revision)

            def do_GET(self) -> None:
                body, revision = self._lookup()
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                self._headers(body, revision)
                self.wfile.write(body[: len(body) // 2] if self.path in hub.truncate else body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def commit(revision: str) -> str:
        """The commit hash a revision (a branch or tag name) stands for here."""
        return hashlib.sha1(revision.encode()).hexdigest()

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

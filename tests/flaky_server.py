"""A real HTTP server on 127.0.0.1 that serves files and misbehaves on request.

    server = FlakyServer({"/a.tar.gz": data})
    server.script("/a.tar.gz", ["drop", "ok"])   # first request drops halfway, then normal
    url = server.url("/a.tar.gz")

Each request to a path takes the next action of its script (then "ok" forever):
  "ok"            200, or 206 for a Range request
  "ignore_range"  200 with the whole file even when a Range was asked for
  "drop"          headers for the whole reply, then half the body, then close (FIN)
  "reset"         the same, but end with a TCP reset (RST)
  "stall"         half the body, then silence longer than any client timeout in the tests
  an int          that HTTP status with a short body
Every request is recorded (path and headers) in `server.requests`.
"""
from __future__ import annotations

import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STALL_SECONDS = 5


class FlakyServer:
    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = dict(files or {})
        self.scripts: dict[str, list] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def script(self, path: str, actions: list) -> None:
        with self._lock:
            self.scripts[path] = list(actions)

    def ranges(self, path: str) -> list[str]:
        """The Range headers received for `path`, in order."""
        return [h["Range"] for p, h in self.requests if p == path and "Range" in h]

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def next_action(self, path: str, headers: dict[str, str]):
        with self._lock:
            self.requests.append((path, headers))
            queue = self.scripts.get(path)
            return queue.pop(0) if queue else "ok"

    def close(self) -> None:
        self._stop.set()  # wake stalled handlers so shutdown does not wait for them
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a dropped client is part of the test
        pass


def _handler(server: FlakyServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            action = server.next_action(path, dict(self.headers.items()))
            if isinstance(action, int):
                return self._status(action)
            data = server.files.get(path)
            if data is None:
                return self._status(404)
            start = 0
            m = re.match(r"^bytes=(\d+)-$", self.headers.get("Range", ""))
            if m and action != "ignore_range":
                start = int(m[1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if action in ("drop", "reset", "stall"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                if action == "stall":
                    server._stop.wait(STALL_SECONDS)
                elif action == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            for i in range(0, len(body), 1 << 16):
                self.wfile.write(body[i : i + (1 << 16)])

        def _status(self, code: int):
            body = f"status {code}\n".encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


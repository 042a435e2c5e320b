"""A tiny HTTP server that the node-agent tests run as a pod's container (a real process, with
the behaviours the tests steer through files):

- `--port=N` (rewritten by the node agent to the pod's host port); listens on 127.0.0.1 only;
- `GET /ready`: 200 when `$READY_FILE` exists (or is unset), else 503; `GET /live`: 500 when
  `$DEAD_FILE` exists, else 200; `GET /info`: argv, cwd, env and the text of the files in `$FILES`
  (colon-separated) as JSON; `GET /`: `hello from $HOSTNAME`;
- SIGTERM: appends `TERM <time>` to `$TERM_FILE`, then exits after `$TERM_DELAY` seconds, or not
  at all when `$IGNORE_TERM` is set (the kubelet's SIGKILL ends it).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
import time


def _file_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        ready, dead = os.environ.get("READY_FILE"), os.environ.get("DEAD_FILE")
        if self.path == "/ready":
            self._send(200 if not ready or os.path.exists(ready) else 503, "ready")
        elif self.path == "/live":
            self._send(500 if dead and os.path.exists(dead) else 200, "live")
        elif self.path == "/info":
            files = {p: _file_text(p) for p in filter(None, os.environ.get("FILES", "").split(":"))}
            self._send(200, json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "files": files, "pid": os.getpid()}))
        else:
            self._send(200, f"hello from {os.environ.get('HOSTNAME', '?')}")

    def _send(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        print(f"{self.command} {self.path}", flush=True)


def main() -> None:
    port = int(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--port=")))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def on_term(signum: int, frame: object) -> None:
        term = os.environ.get("TERM_FILE")
        if term:
            with open(term, "a") as f:
                f.write(f"TERM {time.time()}\n")
        if os.environ.get("IGNORE_TERM"):
            return
        delay = float(os.environ.get("TERM_DELAY", "0"))
        threading.Thread(target=lambda: (time.sleep(delay), os._exit(0)), daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"listening on 127.0.0.1:{port} as {os.environ.get('HOSTNAME')}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

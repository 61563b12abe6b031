"""A stand-in for the Kubernetes API server's Node endpoints, for the kube-mode tests (no
real API server can run here). Run as a process inside a test namespace:

    python fake_apiserver.py CONTROL_SOCKET      # prints the TCP port it listens on (127.0.0.1)

It speaks the real JSON shapes: GET /api/v1/nodes is a NodeList with metadata.resourceVersion;
?watch=true streams chunked ADDED/MODIFIED/DELETED events after the given resourceVersion,
and an ERROR event with a 410 Status when that version was compacted away, as the API server
does. Bearer token "test-token" is required. The test drives it over a unix socket (one JSON
command a line): put / delete a node, end the open watches, compact the history (optionally
deleting nodes unseen), read the request log.
"""

from __future__ import annotations

import copy
import json
import os
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "test-token"
lock = threading.Condition()
state: dict[str, Any] = {"rv": 100, "nodes": {}, "events": [], "compacted": 0, "generation": 0}
requests: list[str] = []


def _bump() -> str:
    state["rv"] += 1
    return str(state["rv"])


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with lock:
            requests.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        if url.path != "/api/v1/nodes":
            self._json(404, _status(404, "NotFound", f"{url.path} not found"))
            return
        if query.get("watch") not in ("true", "1"):
            with lock:
                items = [copy.deepcopy(n) for _, n in sorted(state["nodes"].items())]
                body = {"kind": "NodeList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(state["rv"])}, "items": items}
            self._json(200, body)
            return
        self._watch(query)

    def _watch(self, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 300)
        with lock:
            generation = state["generation"]
            if since < state["compacted"]:
                self._chunk({"type": "ERROR", "object": _status(
                    410, "Expired", f"too old resource version: {since} ({state['compacted']})")})
                self.wfile.write(b"0\r\n\r\n")
                return
            if not since:  # no version: the current objects as ADDED, as the API server does
                for _, node in sorted(state["nodes"].items()):
                    self._chunk({"type": "ADDED", "object": node})
                since = state["rv"]
            while True:
                for rv, kind, obj in state["events"]:
                    if rv > since:
                        self._chunk({"type": kind, "object": obj})
                        since = rv
                if state["generation"] != generation or time.monotonic() > deadline:
                    break
                lock.wait(0.2)
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


class Control(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        cmd = json.loads(self.rfile.readline())
        with lock:
            out = control(cmd)
            lock.notify_all()
        self.wfile.write(json.dumps(out).encode() + b"\n")


def control(cmd: dict[str, Any]) -> Any:
    op = cmd["op"]
    if op == "put":
        node = copy.deepcopy(cmd["node"])
        name = node["metadata"]["name"]
        kind = "MODIFIED" if name in state["nodes"] else "ADDED"
        rv = _bump()
        node["metadata"]["resourceVersion"] = rv
        state["nodes"][name] = node
        state["events"].append((int(rv), kind, copy.deepcopy(node)))
        return rv
    if op == "delete":
        node = state["nodes"].pop(cmd["name"])
        rv = _bump()
        node["metadata"]["resourceVersion"] = rv
        state["events"].append((int(rv), "DELETED", node))
        return rv
    if op == "end_watches":
        state["generation"] += 1
        return state["rv"]
    if op == "compact":  # history before now is gone; deletions in it are never streamed
        for name in cmd.get("delete", []):
            state["nodes"].pop(name)
        state["compacted"] = int(_bump())
        state["events"].clear()
        state["generation"] += 1
        return state["rv"]
    if op == "requests":
        return list(requests)
    raise ValueError(op)


def main() -> None:
    control_path = sys.argv[1]
    api = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    api.daemon_threads = True
    if os.path.exists(control_path):
        os.unlink(control_path)
    ctl = socketserver.ThreadingUnixStreamServer(control_path, Control)
    ctl.daemon_threads = True
    threading.Thread(target=ctl.serve_forever, daemon=True).start()
    print(api.server_address[1], flush=True)
    api.serve_forever()


if __name__ == "__main__":
    main()

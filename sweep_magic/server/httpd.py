"""Thin threaded HTTP layer: authentication, size limits, routing; no sweep logic.

Routes::

    POST /graphql                                   → GraphQLCore.execute
    POST /sweep_magic/v1/agents/<agent_id>/hello    → Controller.hello
    POST /sweep_magic/v1/runs/<run_id>/start|history|finish → Controller.run_*
    anything else (including /sdk/otel/...)         → 404 (a 404 turns wandb's telemetry off)

Every request needs HTTP Basic ``api:<key>``; a wrong or missing key gets 401 before any
body is read or state touched.  Request lines, never headers, are logged: the Authorization
header carries the key.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sweep_magic.server.config import BadInput, ControllerError, NotFound
from sweep_magic.server.controller import Controller
from sweep_magic.server.graphql_core import GraphQLCore, http_status

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
_DRAIN_LIMIT = 4 * MAX_BODY
_AGENT_ROUTE = re.compile(r"^/sweep_magic/v1/agents/([A-Za-z0-9_-]{1,64})/(hello)$")
_RUN_ROUTE = re.compile(r"^/sweep_magic/v1/runs/([A-Za-z0-9_-]{1,64})/(start|history|finish)$")


def _authorized(header: str | None, api_key: str) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, _, key = decoded.partition(":")
    return hmac.compare_digest(key.encode(), api_key.encode())


class _Handler(BaseHTTPRequestHandler):
    server: SweepHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # request line only; never headers (they hold the key)
        log.debug("%s " + fmt, self.address_string(), *args)

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else 0
        except ValueError:
            self._reply(400, {"error": "bad Content-Length"})
            self.close_connection = True
            return None
        if n < 0 or n > MAX_BODY:
            self._discard_body(n)
            self._reply(413, {"error": f"request body over {MAX_BODY} bytes"})
            return None
        body = self.rfile.read(n)
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                self._reply(400, {"error": "bad gzip body"})
                return None
            if len(body) > MAX_BODY:
                self._reply(413, {"error": f"request body over {MAX_BODY} bytes"})
                return None
        return body

    def _discard_body(self, n: int) -> None:
        """Read and drop a body we refuse, so the client can read our answer instead of
        meeting a broken pipe; past a bound, just close the connection after answering."""
        self.close_connection = True
        if n <= 0 or n > _DRAIN_LIMIT:
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                break
            n -= len(chunk)

    def do_GET(self):
        self._unauthorized_or(lambda: self._reply(404, {"error": "not found"}))

    def do_POST(self):
        self._unauthorized_or(self._route_post)

    def _unauthorized_or(self, then) -> None:
        if not _authorized(self.headers.get("Authorization"), self.server.api_key):
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            self._discard_body(n)  # dropped unparsed: nothing from a stranger is acted on
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="sweep_magic"')
            self.send_header("Content-Type", "application/json")
            body = b'{"error": "unauthorized"}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        then()

    def _route_post(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/graphql":
            body = self._read_body()
            if body is None:
                return
            result = self.server.core.execute(body)
            self._reply(http_status(result), result)
            return
        agent = _AGENT_ROUTE.match(path)
        run = _RUN_ROUTE.match(path)
        if not (agent or run):
            try:
                self._discard_body(int(self.headers.get("Content-Length") or 0))
            except ValueError:
                self.close_connection = True
            self._reply(404, {"error": "not found"})
            return
        body = self._read_body()
        if body is None:
            return
        try:
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise BadInput("expected a JSON object")
            ctl = self.server.controller
            if agent:
                ctl.hello(agent.group(1), data)
            else:
                run_id, what = run.groups()
                if what == "start":
                    ctl.run_started(run_id)
                elif what == "history":
                    ctl.run_history(run_id, data.get("rows"))
                else:
                    ctl.run_finished(run_id, data)
        except ValueError as err:
            self._reply(400, {"error": f"body is not JSON: {err}"})
        except NotFound as err:
            self._reply(404, {"error": str(err)})
        except ControllerError as err:
            self._reply(400, {"error": str(err)})
        else:
            self._reply(200, {"ok": True})


class SweepHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of agents' heartbeats on a busy machine
    # (the accept loop gets no CPU for a moment) would see connections reset, not queued.
    request_queue_size = 128

    def __init__(self, address, controller: Controller, api_key: str):
        self.controller = controller
        self.core = GraphQLCore(controller)
        self.api_key = api_key
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        log.exception("request from %s failed", client_address[0])

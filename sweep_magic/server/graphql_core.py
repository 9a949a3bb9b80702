"""GraphQL core of the embedded server: request body in, ``{"data"|"errors"}`` dict out.

No HTTP here (tests call it directly).  The schema is ``schema.SDL``; this module attaches
resolvers that turn controller rows into the shapes wandb reads, and maps controller refusals
to GraphQL errors.  ``http_status()`` tells the HTTP layer which status a result deserves:
wandb treats an HTTP 404 on Heartbeat as "sweep gone" and lets the agent drain and exit.
"""

from __future__ import annotations

import datetime
import json
import math
import threading

import graphql
import yaml

from sweep_magic.server.config import ControllerError, NotFound, parse_config_text
from sweep_magic.server.controller import Controller
from sweep_magic.server.schema import SDL

BAD_REQUEST, NOT_FOUND, REFUSED = "BAD_REQUEST", "NOT_FOUND", "REFUSED"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _json_string_out(value):
    return value if isinstance(value, str) else json.dumps(value)


def _error(message: str, code: str) -> dict:
    return {"message": message, "extensions": {"code": code}}


MAX_CACHED_DOCUMENTS = 64


class GraphQLCore:
    def __init__(self, controller: Controller):
        self.ctl = controller
        self.schema = graphql.build_schema(SDL)
        json_string = self.schema.type_map["JSONString"]
        json_string.serialize = _json_string_out
        json_string.parse_value = lambda v: v
        json_string.parse_literal = lambda node, _vars=None: graphql.value_from_ast_untyped(node, _vars)
        raw = self.schema.type_map["JSON"]
        raw.serialize = lambda v: v
        raw.parse_value = lambda v: v
        raw.parse_literal = lambda node, _vars=None: graphql.value_from_ast_untyped(node, _vars)
        self._root = {
            "viewer": self._viewer,
            "serverInfo": {"features": []},  # every optional backend feature off
            "project": self._project,
            "upsertSweep": self._upsert_sweep,
            "createAgent": self._create_agent,
            "agentHeartbeat": self._heartbeat,
        }
        # The client sends the same few query texts over and over (a heartbeat a second per
        # agent): parsing and validating one costs ~1.2 ms, executing it ~0.05 ms.  Valid
        # documents are kept by their text (ASTs are never changed by execution).
        self._documents: dict[str, graphql.DocumentNode] = {}
        self._documents_lock = threading.Lock()

    def _remember(self, text: str, document) -> None:
        with self._documents_lock:
            if len(self._documents) >= MAX_CACHED_DOCUMENTS:
                self._documents.pop(next(iter(self._documents)))  # oldest first: dicts keep order
            self._documents[text] = document

    # -- entry point --------------------------------------------------------------------------
    def execute(self, body) -> dict:
        """``body``: bytes, str or an already-decoded dict ``{"query", "variables"?}``."""
        if isinstance(body, (bytes, bytearray)):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                return {"errors": [_error("request body is not UTF-8", BAD_REQUEST)]}
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError as err:
                return {"errors": [_error(f"request body is not JSON: {err}", BAD_REQUEST)]}
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return {"errors": [_error("expected a JSON object with a 'query' string", BAD_REQUEST)]}
        variables = body.get("variables") or {}
        if not isinstance(variables, dict):
            return {"errors": [_error("'variables' must be an object", BAD_REQUEST)]}
        document = self._documents.get(body["query"])
        if document is None:
            try:
                document = graphql.parse(body["query"])
            except graphql.GraphQLError as err:
                return {"errors": [_error(err.message, BAD_REQUEST)]}
            problems = graphql.validate(self.schema, document)
            if problems:
                return {"errors": [_error(p.message, BAD_REQUEST) for p in problems]}
            self._remember(body["query"], document)
        result = graphql.execute(self.schema, document, root_value=self._root, variable_values=variables,
                                 operation_name=body.get("operationName") or None)
        out: dict = {"data": result.data}
        if result.errors:
            out["errors"] = [
                {"message": e.message, "path": e.path, "extensions": e.extensions or {"code": REFUSED}}
                for e in result.errors
            ]
        return out

    # -- queries ------------------------------------------------------------------------------
    def _viewer(self, _info):
        return {"id": "local", "name": "local", "entity": self.ctl.entity, "username": "local",
                "email": "", "flags": "{}", "teams": {"edges": []}}

    def _project(self, _info, name=None, entityName=None):
        return self._project_view(entityName or self.ctl.entity, name or "uncategorized")

    def _project_view(self, entity: str, name: str) -> dict:
        return {
            "id": f"{entity}/{name}", "internalId": f"{entity}/{name}", "name": name,
            "entity": {"id": entity, "name": entity}, "readOnly": False,
            "sweep": lambda _i, sweepName: self._sweep_or_none(sweepName),
            "runs": lambda _i, filters=None, after=None, first=None, order=None: self._runs_page(
                _sweep_filter(filters), after, first, order),
            "runCount": lambda _i, filters=None: len(self._runs_for(_sweep_filter(filters))),
            "run": lambda _i, name: self._run_or_none(name),
        }

    def _sweep_or_none(self, sweep_id: str):
        row = self.ctl.store.sweep(sweep_id)
        return self._sweep_view(row) if row else None

    def _sweep_view(self, row: dict) -> dict:
        cfg = row["config"]
        return {
            "id": row["id"], "name": row["id"], "displayName": row["display_name"] or cfg.get("name"),
            "method": cfg.get("method"), "state": row["state"],
            "description": row["description"] or cfg.get("description"),
            "bestLoss": lambda _i: self._best_value(row), "config": yaml.safe_dump(cfg, sort_keys=False),
            "createdAt": _iso(row["created_at"]), "updatedAt": _iso(row["updated_at"]), "heartbeatAt": None,
            "earlyStopJobRunning": False, "controller": row["controller"], "scheduler": row["scheduler"],
            "runCount": lambda _i: len(self.ctl.visible_runs(row["id"])),
            "runCountExpected": cfg.get("run_cap"),
            "project": self._project_view(row["entity"], row["project"]),
            "runs": lambda _i, first=None, after=None, order=None: self._runs_page(row["id"], after, first, order),
        }

    def _best_value(self, row: dict):
        metric = row["config"].get("metric") or {}
        values = [_number(r["summary"].get(metric.get("name"))) for r in self.ctl.visible_runs(row["id"])]
        values = [v for v in values if v is not None]
        if not values:
            return None
        return max(values) if str(metric.get("goal", "minimize")).startswith("max") else min(values)

    def _runs_for(self, sweep_id: str | None) -> list[dict]:
        if sweep_id is None:
            return [r for s in self.ctl.store.sweep_ids() for r in self.ctl.visible_runs(s)]
        return self.ctl.visible_runs(sweep_id)

    def _runs_page(self, sweep_id, after, first, order) -> dict:
        runs = _ordered(self._runs_for(sweep_id), order)
        start = int(after) if after and str(after).isdigit() else 0
        end = len(runs) if first is None else start + max(0, first)
        edges = [{"node": self._run_view(r), "cursor": str(i + 1)} for i, r in enumerate(runs[start:end], start)]
        return {"edges": edges, "pageInfo": {"endCursor": edges[-1]["cursor"] if edges else after,
                                              "hasNextPage": end < len(runs)}}

    def _run_or_none(self, run_id: str):
        run = self.ctl.store.run(run_id)
        return self._run_view(run) if run and run["state"] != "reclaimed" else None

    def _run_view(self, run: dict) -> dict:
        state = {"pending": "pending", "ending": "running"}.get(run["state"], run["state"])
        return {
            "id": run["id"], "projectId": "1", "name": run["id"], "displayName": run["id"],
            "sweepName": run["sweep_id"], "state": state, "config": json.dumps(run["config"]),
            "summaryMetrics": json.dumps(run["summary"]), "systemMetrics": "{}",
            "sampledHistory": lambda _i, specs: _sample(self.ctl.store.history(run["id"]), specs),
            "historyKeys": None, "historyLineCount": lambda _i: self.ctl.store.history_count(run["id"]),
            "exitcode": run["exit_code"], "heartbeatAt": _iso(run["ended_at"] or run["started_at"]),
            "createdAt": _iso(run["created_at"]), "shouldStop": bool(run["should_stop"]),
            "failed": state in ("failed", "crashed"), "stopped": state == "killed",
            "running": state in ("running", "pending"), "tags": [], "group": None, "jobType": None,
            "commit": None, "readOnly": False, "description": None, "notes": run.get("note"),
            "user": {"name": "local", "username": "local"},
        }

    # -- mutations ----------------------------------------------------------------------------
    def _upsert_sweep(self, _info, input):
        fields = {k: input.get(src) for k, src in (("controller", "controller"), ("scheduler", "scheduler"),
                                                   ("description", "description"), ("display_name", "displayName"))
                  if input.get(src) is not None}
        with _refusals():
            if input.get("id") is None:
                config = parse_config_text(input.get("config"))
                sweep_id, warnings = self.ctl.create_sweep(
                    config, entity=input.get("entityName"), project=input.get("projectName"), **fields)
            else:
                sweep_id, warnings = input["id"], []
                self.ctl.set_sweep_fields(sweep_id, **fields)
                if input.get("state"):
                    self.ctl.set_sweep_state(sweep_id, input["state"])
        return {"sweep": self._sweep_view(self.ctl.store.sweep(sweep_id)), "configValidationWarnings": warnings}

    def _create_agent(self, _info, input):
        with _refusals():
            agent_id = self.ctl.create_agent(input["sweep"], input.get("host"))
        return {"agent": {"id": agent_id}}

    def _heartbeat(self, _info, input):
        with _refusals():
            commands = self.ctl.heartbeat(input["id"], input.get("runState"))
        return {"agent": {"id": input["id"]}, "commands": json.dumps(commands)}


class _refusals:
    """Controller refusals → GraphQL errors with a code the HTTP layer maps to a status."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, ControllerError):
            code = NOT_FOUND if isinstance(exc, NotFound) else REFUSED
            raise graphql.GraphQLError(str(exc), extensions={"code": code}) from exc
        return False


def http_status(result: dict) -> int:
    codes = {(e.get("extensions") or {}).get("code") for e in result.get("errors") or []}
    if NOT_FOUND in codes:
        return 404
    if BAD_REQUEST in codes:
        return 400
    return 200


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return value


def _sweep_filter(filters) -> str | None:
    """The sweep id in the client's run filters (``{"$and": [{"sweep": ID}]}``)."""
    if isinstance(filters, str):
        try:
            filters = json.loads(filters)
        except ValueError:
            return None
    if isinstance(filters, dict):
        if isinstance(filters.get("sweep"), str):
            return filters["sweep"]
        for value in filters.values():
            found = _sweep_filter(value)
            if found:
                return found
    if isinstance(filters, list):
        for item in filters:
            found = _sweep_filter(item)
            if found:
                return found
    return None


def _ordered(runs: list[dict], order: str | None) -> list[dict]:
    """The orders the client asks for: ``±created_at`` and ``±summary_metrics.<name>``."""
    if not order:
        return runs
    descending = order.startswith("-")
    key = order.lstrip("+-")
    if key.startswith("summary_metrics."):
        name = key[len("summary_metrics."):]
        with_value = [r for r in runs if _number(r["summary"].get(name)) is not None]
        without = [r for r in runs if _number(r["summary"].get(name)) is None]
        # Runs without the metric go last either way, as on W&B.
        return sorted(with_value, key=lambda r: r["summary"][name], reverse=descending) + without
    return sorted(runs, key=lambda r: r["seq"], reverse=descending)


def _sample(history: list[dict], specs) -> list[list[dict]]:
    out = []
    for spec in specs or ["{}"]:
        try:
            spec = json.loads(spec) if isinstance(spec, str) else (spec or {})
        except ValueError:
            spec = {}
        keys = spec.get("keys") if isinstance(spec, dict) else None
        rows = [{k: r[k] for k in keys if k in r} for r in history] if keys else list(history)
        samples = spec.get("samples") if isinstance(spec, dict) else None
        out.append(rows[-samples:] if isinstance(samples, int) and samples > 0 else rows)
    return out

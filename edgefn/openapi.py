"""`edgefn openapi`: the OpenAPI 3.1 document of every function's routes, built from the
routes' pydantic models (query, body, response) and the shared envelope."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from functions import FUNCTIONS

REF = "#/components/schemas/{model}"

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable"},
                "message": {"type": "string"},
                "request_id": {"type": ["string", "null"]},
                "details": {},
            },
        },
    },
}

ERROR_STATUSES = {
    "400": "invalid input",
    "401": "missing or invalid access token",
    "404": "not found",
    "413": "body too large",
    "429": "rate limited (Retry-After)",
    "503": "a backing service is unavailable",
}


def _envelope(data_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"const": True}, "data": data_schema, "metadata": {"type": "object"}},
    }


def build() -> dict[str, Any]:
    apps = [importlib.import_module(module).fn for _, module in sorted(FUNCTIONS.items())]
    models: list[tuple[type[BaseModel], str]] = []
    for fn in apps:
        for route in fn.routes:
            if route.body is not None:
                models.append((route.body, "validation"))
            if route.response is not None:
                models.append((route.response, "serialization"))
    keys, defs = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Error"] = ERROR_SCHEMA

    paths: dict[str, Any] = {}
    for fn in apps:
        for route in fn.routes:
            if "internal" in route.tags:
                continue  # the scheduler's route: platform plumbing, not the clients' API
            path = fn.base + ("" if route.path == "/" else route.path)
            path = path.replace(":int}", "}").replace(":str}", "}").replace(":path}", "}")
            op: dict[str, Any] = {
                "operationId": f"{fn.name}.{route.name}",
                "summary": route.summary or (route.endpoint.__doc__ or "").strip().split("\n")[0],
                "tags": [fn.name, *route.tags],
                "parameters": [],
                "responses": {},
            }
            if route.auth != "public":
                op["security"] = [{"bearerAuth": []}] if route.auth == "required" else [{"bearerAuth": []}, {}]
            for name in route.param_convertors:
                op["parameters"].append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
            if route.query is not None:
                qs = route.query.model_json_schema(ref_template=REF)
                required = set(qs.get("required", []))
                for name, prop in qs.get("properties", {}).items():
                    op["parameters"].append(
                        {"name": name, "in": "query", "required": name in required, "schema": prop}
                    )
            if route.body is not None:
                ref = keys[(route.body, "validation")]
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
            elif route.raw_body:
                op["requestBody"] = {"content": {"*/*": {"schema": {}}}}
            data_schema = keys[(route.response, "serialization")] if route.response is not None else {}
            op["responses"][str(route.status_code)] = {
                "description": "success",
                "content": {"application/json": {"schema": _envelope(data_schema)}},
            }
            for status, desc in ERROR_STATUSES.items():
                if status == "401" and route.auth == "public":
                    continue
                op["responses"][status] = {
                    "description": desc,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
                }
            paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgefn functions", "version": "0.1.0"},
        "servers": [{"url": "http://127.0.0.1:8000", "description": "edgefn dev"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="write to this file instead of standard output")


def run(args: argparse.Namespace) -> int:
    doc = json.dumps(build(), indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(doc + "\n")
    else:
        sys.stdout.write(doc + "\n")
    return 0

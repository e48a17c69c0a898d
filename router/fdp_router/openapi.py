"""The router's API as an OpenAPI 3.1 document (served at ``/openapi.json``).

Request schemas come from the pydantic models the handlers parse with, so the document
cannot drift from what the router accepts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fdp_router.models import ChatRequest, InferenceRequest

_ERR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid input: names the field and the reason",
        401: "missing or invalid bearer token",
        403: "not allowed, or privacy budget exceeded "
        "(type privacy_budget_exceeded, with requested and available)",
        404: "not found",
        409: "managed by the operator: change the named FederatedRouter instead",
        429: "overloaded; retry after the Retry-After header",
        502: "backend failed, or too few consensus answers (nothing charged)",
        503: "no healthy node for the department",
        504: "backend timed out (nothing charged)",
    }
    return {
        str(c): {"description": text[c], "content": {"application/json": {"schema": _ERR}}} for c in codes
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _schemas() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Request schemas with their nested models hoisted into components (valid $refs)."""
    shared: dict[str, Any] = {}
    out = []
    for model in (InferenceRequest, ChatRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        shared.update(schema.pop("$defs", {}))
        out.append(schema)
    return out[0], out[1], shared


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    inference_schema, chat_schema, shared = _schemas()
    ops = {
        "/v1/inference": {
            "post": {
                "summary": "Answer a prompt under a differential-privacy charge",
                "security": bearer,
                "requestBody": _json(inference_schema),
                "responses": {
                    "200": {
                        "description": "released answer",
                        **_json({"$ref": "#/components/schemas/Inference"}),
                    },
                    **_errors(400, 401, 403, 429, 502, 503, 504),
                },
            }
        },
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI-compatible chat completion; privacy fields as extra body fields",
                "security": bearer,
                "requestBody": _json(chat_schema),
                "responses": {
                    "200": {"description": "chat.completion with a `privacy` object and X-FDP-* headers"},
                    **_errors(400, 401, 403, 429, 502, 503, 504),
                },
            }
        },
        "/v1/privacy/budget/{user_id}": {
            "get": {
                "summary": "A user's budget in the current window (own, or any for auditor/admin)",
                "security": bearer,
                "parameters": [
                    {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "total, consumed, remaining, window"},
                    **_errors(401, 403),
                },
            }
        },
        "/v1/health": {"get": {"summary": "component health", "responses": {"200": {"description": "ok"}}}},
        "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {
            "get": {
                "summary": "readiness: config loaded and at least one healthy node",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        "/openapi.json": {
            "get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI"}}}
        },
        "/v1/admin/nodes": {
            "get": {
                "summary": "nodes and their live state (admin)",
                "security": bearer,
                "responses": _errors(401, 403, 409),
            },
            "post": {
                "summary": "add a node (admin, standalone only)",
                "security": bearer,
                "responses": _errors(400, 401, 403, 409),
            },
        },
        "/v1/admin/nodes/{node_id}": {
            "delete": {
                "summary": "remove a node (admin, standalone only)",
                "security": bearer,
                "parameters": [
                    {"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _errors(401, 403, 404, 409),
            },
        },
        "/v1/admin/config": {
            "get": {
                "summary": "the running config (admin)",
                "security": bearer,
                "responses": _errors(401, 403, 409),
            },
            "put": {
                "summary": "replace the config (admin, standalone only)",
                "security": bearer,
                "responses": _errors(400, 401, 403, 409),
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "federated-dp-llm router", "version": "0.1.0"},
        "paths": ops,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                **shared,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["type", "message"],
                            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Inference": {
                    "type": "object",
                    "properties": {
                        "success": {"type": "boolean"},
                        "response": {"type": "string"},
                        "privacy_cost": {"type": "number"},
                        "remaining_budget": {"type": ["number", "null"]},
                        "node_id": {"type": "string"},
                        "processing_time": {"type": "number"},
                        "consensus_reached": {"type": ["boolean", "null"]},
                        "confidence_score": {"type": ["number", "null"]},
                        "cached": {"type": "boolean"},
                    },
                },
            },
        },
    }

"""The router's API as an OpenAPI 3.1 document (served at ``/openapi.json``).

Request schemas come from the pydantic models the handlers parse with, so the document
cannot drift from what the router accepts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fdp_router.models import InferenceRequest
from fdp_router.openai_api import OpenAIChatRequest

_ERR = {"$ref": "#/components/schemas/Error"}
_OPENAI_ERR = {"$ref": "#/components/schemas/OpenAIError"}


def _openai_errors(*codes: int) -> dict[str, Any]:
    """The same statuses with OpenAI's error envelope (the OpenAI-compatible routes)."""
    out = _errors(*codes)
    for doc in out.values():
        doc["content"] = {"application/json": {"schema": _OPENAI_ERR}}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid input: names the field and the reason",
        401: "missing or invalid bearer token",
        403: "not allowed, or privacy budget exceeded "
        "(type privacy_budget_exceeded, with requested and available)",
        404: "not found",
        409: "managed by the operator: change the named FederatedRouter instead",
        405: "method not allowed",
        429: "overloaded or rate-limited; retry after the Retry-After header",
        502: "backend failed, or too few consensus answers (nothing charged)",
        503: "no healthy node for the department",
        504: "backend timed out (nothing charged)",
    }
    return {
        str(c): {"description": text[c], "content": {"application/json": {"schema": _ERR}}} for c in codes
    }


_CHAT_EXAMPLE = {
    "model": "fdp-router",
    "messages": [{"role": "user", "content": "How is sepsis managed?"}],
    "privacy_budget": 0.1,
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _schemas() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Request schemas with their nested models hoisted into components (valid $refs)."""
    shared: dict[str, Any] = {}
    out = []
    for model in (InferenceRequest, OpenAIChatRequest):
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
                    **_errors(400, 401, 403, 404, 429, 502, 503, 504),
                },
            }
        },
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI-compatible chat completion; privacy fields as extra body fields",
                "description": "With `stream: true`: server-sent events as OpenAI sends them "
                "(`chat.completion.chunk` objects, `data: [DONE]` last); the final chunk carries "
                "the `privacy` object, repeated in an SSE comment `: fdp-privacy {...}`. Errors "
                "use OpenAI's envelope.",
                "security": bearer,
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": chat_schema,
                            "examples": {
                                "answer": {"value": _CHAT_EXAMPLE},
                                "stream": {
                                    "value": {
                                        **_CHAT_EXAMPLE,
                                        "stream": True,
                                        "stream_options": {"include_usage": True},
                                    }
                                },
                            },
                        }
                    }
                },
                "responses": {
                    "200": {
                        "description": "chat.completion with a `privacy` object and X-FDP-* headers, "
                        "or (stream: true) its server-sent events",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                            "text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatStreamEvent"}},
                        },
                    },
                    **_openai_errors(400, 401, 403, 404, 429, 502, 503, 504),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "OpenAI's model list: the models the caller's department may use",
                "security": bearer,
                "responses": {
                    "200": {
                        "description": "list of models",
                        **_json({"$ref": "#/components/schemas/ModelList"}),
                    },
                    **_openai_errors(401, 429),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "one model of the list (404 model_not_found otherwise)",
                "security": bearer,
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "the model", **_json({"$ref": "#/components/schemas/Model"})},
                    **_openai_errors(401, 404, 429),
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
                "OpenAIError": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type", "param", "code"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
                "ChatCompletion": {
                    "type": "object",
                    "required": ["id", "object", "created", "model", "choices", "usage", "privacy"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "chat.completion"},
                        "created": {"type": "integer"},
                        "model": {"type": "string"},
                        "system_fingerprint": {"type": "string"},
                        "choices": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["index", "message", "finish_reason"],
                                "properties": {
                                    "index": {"type": "integer"},
                                    "message": {
                                        "type": "object",
                                        "required": ["role", "content"],
                                        "properties": {
                                            "role": {"const": "assistant"},
                                            "content": {"type": "string"},
                                        },
                                    },
                                    "logprobs": {"type": ["object", "null"]},
                                    "finish_reason": {"type": "string"},
                                },
                            },
                        },
                        "usage": {
                            "type": "object",
                            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                            "properties": {
                                "prompt_tokens": {"type": "integer"},
                                "completion_tokens": {"type": "integer"},
                                "total_tokens": {"type": "integer"},
                            },
                        },
                        "privacy": {"$ref": "#/components/schemas/Privacy"},
                    },
                },
                "ChatStreamEvent": {
                    "type": "object",
                    "description": "one server-sent event (as OpenAPI 3.1 describes a stream, event by "
                    "event): `data` is a chat.completion.chunk as JSON, the last one with the `privacy` "
                    "object, then `[DONE]`; a stream that breaks after it started ends with an "
                    "OpenAI error object instead. An SSE comment `: fdp-privacy {...}` precedes "
                    "`[DONE]`.",
                    "required": ["data"],
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                },
                "Privacy": {
                    "type": "object",
                    "required": ["epsilon", "delta", "cached", "nodes", "basis"],
                    "properties": {
                        "epsilon": {"type": "number"},
                        "delta": {"type": "number"},
                        "remaining_budget": {"type": ["number", "null"]},
                        "cached": {"type": "boolean"},
                        "consensus": {"type": "boolean"},
                        "consensus_reached": {"type": ["boolean", "null"]},
                        "confidence": {"type": ["number", "null"]},
                        "nodes": {"type": "array", "items": {"type": "string"}},
                        "policy": {"type": "string"},
                        "basis": {"type": "string"},
                    },
                },
                "Model": {
                    "type": "object",
                    "required": ["id", "object", "created", "owned_by"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                        "fdp": {
                            "type": "object",
                            "description": "what the model is made of: kind (node_model, alias, router), "
                            "data classes, DP mechanisms, hospitals and nodes",
                        },
                    },
                },
                "ModelList": {
                    "type": "object",
                    "required": ["object", "data"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
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

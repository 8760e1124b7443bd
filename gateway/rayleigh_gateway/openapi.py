"""The gateway's OpenAPI 3.0 document (served at /openapi.json, checked with schemathesis)."""

from __future__ import annotations

from typing import Any

import orjson

from .limits import MAX_COUNT

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "string", "nullable": True},
                "param": {"type": "string", "nullable": True},
            },
        }
    },
}


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_RATE_HEADERS = {
    "x-ratelimit-limit-requests": {"schema": {"type": "string"}},
    "x-ratelimit-remaining-requests": {"schema": {"type": "string"}},
    "x-ratelimit-reset-requests": {"schema": {"type": "string"}},
    "x-ratelimit-limit-tokens": {"schema": {"type": "string"}},
    "x-ratelimit-remaining-tokens": {"schema": {"type": "string"}},
    "x-ratelimit-reset-tokens": {"schema": {"type": "string"}},
    "x-rayleigh-overhead-ms": {"schema": {"type": "string"}, "description": "Time spent in the gateway."},
}

_PROXY_RESPONSES: dict[str, Any] = {
    "200": {
        "description": "The backend's answer, passed through (JSON, or SSE when stream is true).",
        "headers": _RATE_HEADERS,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            # OpenAPI 3.0: `schema` describes one event (data: a JSON chunk, or [DONE] last).
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "string"},
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                }
            },
        },
    },
    "400": _err(
        "Invalid JSON, no or an invalid model name, a token/sequence count or stream flag of the wrong type "
        "(`param` names it), or the backend refused the request."
    ),
    "401": _err("Missing, invalid, expired or revoked credentials."),
    "403": _err("Client address not in the allow-list, or the key may not use this model."),
    "404": _err("Unknown model, or one the caller's valid credential may not use."),
    "413": _err("Body larger than the configured limit."),
    "422": _err("The backend refused the request's fields."),
    "429": {
        "description": "A rate limit is exhausted; see Retry-After.",
        "headers": {"retry-after": {"schema": {"type": "string"}}, **_RATE_HEADERS},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "502": _err("The backend is unreachable or failed."),
    "504": _err("The backend did not answer in time."),
}

# The gateway validates only what it reads (`model`, and what sizes a generation: the token
# budget, the sequence counts, `stream`); every other field passes through untouched to the
# backend, which validates it (the required fields below are the backend's: a request without
# them gets its 400).
_MODEL = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
    "description": "Served model or LoRA adapter name.",
}
_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_COUNT, "nullable": True}
_GENERATION = {
    "max_tokens": {**_COUNT, "description": "Completion budget per sequence (the gateway writes one when absent)."},
    "n": {**_COUNT, "description": "Sequences to generate (the charge is multiplied by it)."},
    "stream": {"type": "boolean", "nullable": True},
}


def _post(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}, {"apiKey": []}, {}],  # {}: models with public: true
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": _PROXY_RESPONSES,
        }
    }


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Rayleigh gateway",
        "version": "0.1.0",
        "description": "OpenAI-compatible endpoints with API keys/JWT, IP allow-lists and rate limits.",
    },
    "paths": {
        "/v1/chat/completions": _post(
            "Chat completion, routed by model",
            {
                "type": "object",
                "required": ["model", "messages"],
                "properties": {
                    "model": _MODEL,
                    "messages": {"type": "array"},
                    **_GENERATION,
                    "max_completion_tokens": _COUNT,
                },
            },
        ),
        "/v1/completions": _post(
            "Text completion, routed by model",
            {
                "type": "object",
                "required": ["model", "prompt"],
                "properties": {
                    "model": _MODEL,
                    "prompt": {"anyOf": [{"type": "string"}, {"type": "array"}]},
                    **_GENERATION,
                    "best_of": _COUNT,
                },
            },
        ),
        "/v1/embeddings": _post(
            "Embeddings, where the model's backend offers them",
            {"type": "object", "required": ["model", "input"], "properties": {"model": _MODEL, "input": {}}},
        ),
        "/v1/models": {
            "get": {
                "summary": "Models the caller may use",
                "security": [{"bearer": []}, {"apiKey": []}, {}],
                "responses": {
                    "200": {
                        "description": "The caller's models.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["object", "data"],
                                    "properties": {
                                        "object": {"type": "string", "enum": ["list"]},
                                        "data": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "required": ["id", "object"],
                                                "properties": {
                                                    "id": {"type": "string"},
                                                    "object": {"type": "string"},
                                                    "created": {"type": "integer"},
                                                    "owned_by": {"type": "string"},
                                                },
                                            },
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "401": _err("Invalid credentials, or none and no public model."),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "responses": {
                    "200": {
                        "description": "Alive.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    },
    "components": {
        "schemas": {"Error": _ERROR},
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "API key (rk_...) or JWT"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        },
    },
}

OPENAPI_JSON = orjson.dumps(DOCUMENT)

"""Streaming answers: Anthropic's SSE events and OpenAI's chat-completion chunks, and how they break."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

from authpool.server.loopback.models import error_body

STREAM_ERROR_MODES: Final = frozenset({"error-first", "error-after-content", "overloaded-first"})


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def text_pieces(subject: str, length: int | None) -> tuple[str, ...]:
    """The text deltas of a streamed answer: "Hello", " from ", "SUBJECT." or, with ``length``, that many."""
    if length is None:
        return ("Hello", " from ", f"{subject}.")
    return tuple(f"t{i} " for i in range(length))


def sse_events(subject: str, seq: int, model: str, mode: str | None, length: int | None = None) -> Iterator[bytes]:
    """Anthropic's streaming event sequence, optionally broken by an ``error`` event."""
    error = _sse("error", error_body(429, "rate limit exceeded"))
    if mode == "error-first":
        yield error
        return
    if mode == "overloaded-first":
        yield _sse("error", error_body(529, "Overloaded"))
        return
    yield _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": f"msg_loopback_{seq}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 5, "output_tokens": 0},
                "subject": subject,
            },
        },
    )
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for i, piece in enumerate(text_pieces(subject, length)):
        yield _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
        )
        if mode == "error-after-content" and i == 0:
            yield error
            return
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 4},
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


def chat_chunks(subject: str, seq: int, model: str, mode: str | None, created: int,
                length: int | None = None) -> Iterator[bytes]:
    """OpenAI's chat-completions stream (``data:`` chunks, then ``[DONE]``), optionally broken.

    OpenAI-compatible servers report an error inside a stream as a bare ``data: {"error": …}``
    chunk: a rate limit as ``type`` "tokens" with ``code`` "rate_limit_exceeded", naming the model.
    """
    if mode == "overloaded-first":
        yield _data({"error": {"message": "The server is overloaded. Please try again later.",
                               "type": "server_error", "param": None, "code": None}})
        return
    error = _data({"error": {"message": f"Rate limit reached for {model} in organization org-loopback on tokens "
                                        "per min (TPM): Limit 30000, Used 30000, Requested 120.",
                             "type": "tokens", "param": None, "code": "rate_limit_exceeded"}})
    if mode == "error-first":
        yield error
        return
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({"id": f"chatcmpl-loopback-{seq}", "object": "chat.completion.chunk", "created": created,
                      "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    for i, piece in enumerate(text_pieces(subject, length)):
        yield chunk({"content": piece})
        if mode == "error-after-content" and i == 0:
            yield error
            return
    yield chunk({}, "stop")
    yield b"data: [DONE]\n\n"


def _data(doc: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(doc)}\n\n".encode()

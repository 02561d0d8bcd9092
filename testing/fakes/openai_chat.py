"""A local OpenAI Chat Completions server (``POST /v1/chat/completions``) for tests.

It answers from a `Script` over the real wire format, streaming or not, so pipecat's
``OpenAILLMService`` and the ``openai`` SDK run unchanged against it. It rejects what
OpenAI rejects (bad key, missing model, a tool result with no matching tool call), in
OpenAI's error shape, and reports usage the way OpenAI does, including automatic prompt
caching, with tokens counted by `tollbridge.testing.fakes.tokens`:

- ``prompt_tokens`` covers the tools then the messages, one serialized piece each, and
  is gross: it includes the cached tokens.
- ``prompt_tokens_details.cached_tokens`` is the prompt's longest prefix shared with an
  earlier request to this fake (same model and ``prompt_cache_key``), if that is at
  least 1024 tokens, rounded down to 1024 + 128·k.
- ``completion_tokens`` covers the reply text and each tool call's name and arguments.
"""

import hashlib
import itertools
import json
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from tollbridge.testing.fakes.http_sse import FakeHTTPServer, open_sse, parse_json, send_sse
from tollbridge.testing.fakes.script import Script, ScriptedTurn, ScriptMismatch, fragments, words
from tollbridge.testing.fakes.tokens import (
    AutomaticPrefixCache,
    Segment,
    count_tokens,
    text_segment,
)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")

_SERVER_ERROR_MESSAGES = {
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later", "server_error", None),
}


def openai_error(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None
) -> web.Response:
    """An error response in OpenAI's shape."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


def masked_key(key: str) -> str:
    """Show a key the way OpenAI's error messages do: both ends, middle hidden."""
    return f"{key[:3]}{'*' * max(len(key) - 7, 3)}{key[-4:]}" if len(key) > 8 else "***"


def message_text(content: Any) -> str:
    """The text of a message's content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict)).strip()
    return ""


class _BadRequest(Exception):
    """A request OpenAI would refuse with 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


def _validate(body: Any) -> None:
    """Refuse what the real endpoint refuses, with its messages."""
    if not isinstance(body, dict):
        raise _BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means "
            "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
            "payload, but what was sent was not valid JSON.)"
        )
    if not body.get("model"):
        raise _BadRequest("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise _BadRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    if "stream_options" in body and not body.get("stream"):
        raise _BadRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    _validate_messages(messages)


def _validate_messages(messages: list[Any]) -> None:
    """Roles are known, and tool calls and tool results pair up in order."""
    pending: dict[str, int] = {}  # unanswered tool_call_id -> index of its assistant message
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise _BadRequest(
                f"Invalid value: {role!r}. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.",
                f"messages[{i}].role",
                "invalid_value",
            )
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                raise _BadRequest(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            del pending[message["tool_call_id"]]
            continue
        if pending:
            raise _BadRequest(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}",
                f"messages.[{next(iter(pending.values()))}].role",
            )
        if role == "assistant":
            pending = {call.get("id"): i for call in message.get("tool_calls") or []}
    if pending:
        raise _BadRequest(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(pending)}",
            f"messages.[{next(iter(pending.values()))}].role",
        )


def last_user_or_tool_text(messages: list[dict[str, Any]]) -> str:
    """The text a scripted turn's ``match`` is checked against."""
    for message in reversed(messages):
        if message.get("role") in ("user", "tool"):
            return message_text(message.get("content"))
    return ""


def prompt_segments(body: dict[str, Any]) -> list[Segment]:
    """The prompt in cache order: tools, then messages, one segment each."""
    tools = body.get("tools") or []
    return [text_segment(tool) for tool in tools] + [
        text_segment(message) for message in body["messages"]
    ]


class OpenAIChatFake(FakeHTTPServer):
    """Fake ``/v1/chat/completions``; point the SDK at ``base_url + "/v1"``.

    Args:
        script: Replies, one per request, in order (see `ScriptedTurn`).
        api_key: The key clients must send as ``Authorization: Bearer``.
        fail_status: Answer every request with this HTTP status (429, 500, 503, ...) in
            OpenAI's error shape, before the script is consulted. Set it back to None to
            recover.
        fail_mid_stream: Stream part of the reply, then an error event, and close; a
            non-streaming request gets a 500. The scripted turn is not used up, so a
            retry gets it.
    """

    def __init__(
        self,
        script: Sequence[ScriptedTurn],
        *,
        api_key: str = "sk-test-openai",
        fail_status: int | None = None,
        fail_mid_stream: bool = False,
    ) -> None:
        super().__init__()
        self.script = script if isinstance(script, Script) else Script(script)
        self.api_key = api_key
        self.fail_status = fail_status
        self.fail_mid_stream = fail_mid_stream
        self._cache = AutomaticPrefixCache()
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._handle)]

    @property
    def client_url(self) -> str:
        return self.base_url + "/v1"

    def _reject(self, response: web.Response, reason: str) -> web.Response:
        self.failures.append(f"{response.status}: {reason}")
        return response

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{hashlib.sha1(str(next(self._ids)).encode()).hexdigest()[:24]}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = parse_json(await request.text())
        self.record(request, body)

        auth = request.headers.get("Authorization", "")
        if not auth:
            return self._reject(
                openai_error(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                    "YOUR_KEY).",
                    "invalid_request_error",
                ),
                "missing Authorization header",
            )
        if auth != f"Bearer {self.api_key}":
            shown = masked_key(auth.removeprefix("Bearer "))
            return self._reject(
                openai_error(
                    401,
                    f"Incorrect API key provided: {shown}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    code="invalid_api_key",
                ),
                f"wrong API key {shown}",
            )
        try:
            _validate(body)
        except _BadRequest as e:
            return self._reject(
                openai_error(400, str(e), "invalid_request_error", e.param, e.code), str(e)
            )

        if self.fail_status is not None:
            message, type_, code = _SERVER_ERROR_MESSAGES.get(
                self.fail_status, _SERVER_ERROR_MESSAGES[500]
            )
            return openai_error(self.fail_status, message, type_, code=code)

        try:
            turn = self.script.check(last_user_or_tool_text(body["messages"]))
        except ScriptMismatch as e:
            return self._reject(
                openai_error(
                    400, str(e), "invalid_request_error", "messages", "fake_script_mismatch"
                ),
                str(e),
            )

        segments = prompt_segments(body)
        partition = (body["model"], body.get("prompt_cache_key"))
        usage = self._usage(turn, segments, self._cache.lookup_and_store(partition, segments).total)
        tool_calls = [
            {
                "id": self._next_id("call_"),
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call["arguments"], ensure_ascii=False),
                },
            }
            for call in turn.get("tool_calls", [])
        ]
        completion_id = self._next_id("chatcmpl-")
        headers = {"x-request-id": self._next_id("req_")}

        if not body.get("stream"):
            if self.fail_mid_stream:
                message, type_, _ = _SERVER_ERROR_MESSAGES[500]
                return openai_error(500, message, type_)
            self.script.advance()
            return web.json_response(
                self._completion(body, completion_id, turn, tool_calls, usage), headers=headers
            )

        if not self.fail_mid_stream:
            self.script.advance()
        response = await open_sse(request, headers)
        await self._stream(response, body, completion_id, turn, tool_calls, usage)
        return response

    def _usage(self, turn: ScriptedTurn, segments: list[Segment], cached: int) -> dict[str, Any]:
        prompt = sum(segment.tokens for segment in segments)
        completion = count_tokens(turn.get("text", "")) + sum(
            count_tokens(call["name"] + json.dumps(call["arguments"], ensure_ascii=False))
            for call in turn.get("tool_calls", [])
        )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _completion(
        self,
        body: dict[str, Any],
        completion_id: str,
        turn: ScriptedTurn,
        tool_calls: list[dict[str, Any]],
        usage: dict[str, Any],
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": turn.get("text") or None,
            "refusal": None,
            "annotations": [],
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                }
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    async def _stream(
        self,
        response: web.StreamResponse,
        body: dict[str, Any],
        completion_id: str,
        turn: ScriptedTurn,
        tool_calls: list[dict[str, Any]],
        usage: dict[str, Any],
    ) -> None:
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        obfuscate = options.get("include_obfuscation", True)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
            }
            if include_usage:
                data["usage"] = None
            if obfuscate:
                data["obfuscation"] = "Xq3z"
            return data

        text = turn.get("text", "")
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": "" if text else None, "refusal": None}
        ]
        if text:
            deltas += [{"content": piece} for piece in words(text)]
        for index, call in enumerate(tool_calls):
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in fragments(call["function"]["arguments"], 6)
            ]

        if self.fail_mid_stream:
            for delta in deltas[: max(1, len(deltas) // 2)]:
                await send_sse(response, chunk(delta))
            message, type_, _ = _SERVER_ERROR_MESSAGES[500]
            await send_sse(
                response,
                {"error": {"message": message, "type": type_, "param": None, "code": None}},
            )
            return

        for delta in deltas:
            await send_sse(response, chunk(delta))
        await send_sse(response, chunk({}, "tool_calls" if tool_calls else "stop"))
        if include_usage:
            final = chunk({})
            final["choices"] = []
            final["usage"] = usage
            await send_sse(response, final)
        await send_sse(response, "[DONE]")

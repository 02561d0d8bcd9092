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
from typing import Any, ClassVar

from aiohttp import web

from tollbridge.testing.fakes.script import Script, ScriptedTurn, ScriptMismatch, fragments, words
from tollbridge.testing.fakes.server import FakeServer, Rejection, RequestRecord, ServerErrors
from tollbridge.testing.fakes.tokens import (
    AutomaticPrefixCache,
    Segment,
    count_tokens,
    text_segment,
)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")

_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


def _error_type(status: int) -> str:
    """OpenAI's error ``type`` follows the status: a rate limit, its own fault, or the request's."""
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


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


def _bad(message: str, param: str | None = None, code: str | None = None) -> Rejection:
    """A request OpenAI refuses with 400."""
    return Rejection(400, code, message, param=param)


def _validate(body: Any) -> None:
    """Refuse what the real endpoint refuses, with its messages."""
    if not isinstance(body, dict):
        raise _bad(
            "We could not parse the JSON body of your request. (HINT: This likely means "
            "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
            "payload, but what was sent was not valid JSON.)"
        )
    if not body.get("model"):
        raise _bad("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise _bad(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise _bad(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    if "stream_options" in body and not body.get("stream"):
        raise _bad(
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
            raise _bad(
                f"Invalid value: {role!r}. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.",
                f"messages[{i}].role",
                "invalid_value",
            )
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                raise _bad(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            del pending[message["tool_call_id"]]
            continue
        if pending:
            raise _bad(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}",
                f"messages.[{next(iter(pending.values()))}].role",
            )
        if role == "assistant":
            pending = {call.get("id"): i for call in message.get("tool_calls") or []}
    if pending:
        raise _bad(
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


class OpenAIFakeServer(FakeServer[RequestRecord]):
    """OpenAI's Bearer auth and error body, shared by the chat and realtime fakes."""

    record_type = RequestRecord
    streams_replies = True
    server_errors: ClassVar[ServerErrors] = {
        429: ("rate_limit_exceeded", "Rate limit reached for requests"),
        500: (None, _SERVER_ERROR),
        503: (None, "The engine is currently overloaded, please try again later"),
    }

    def authorize(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise Rejection(
                401,
                None,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if auth != f"Bearer {self.api_key}":
            raise Rejection(
                401,
                "invalid_api_key",
                f"Incorrect API key provided: {masked_key(auth.removeprefix('Bearer '))}. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
            )

    def error_response(self, rejection: Rejection, record: RequestRecord) -> web.Response:
        """``{"error": {message, type, param, code}}``."""
        error = {
            "message": rejection.message,
            "type": _error_type(rejection.status),
            "param": rejection.param,
            "code": rejection.code,
        }
        return web.json_response({"error": error}, status=rejection.status)


class OpenAIChatFake(OpenAIFakeServer):
    """Fake ``/v1/chat/completions``; point the SDK at ``base_url + "/v1"``.

    Args:
        script: Replies, one per request, in order (see `ScriptedTurn`).
        api_key: The key clients must send as ``Authorization: Bearer``.
        outage, fail_after: The fault options (see `FakeServer`); `fail_after` counts
            the chunks of a streamed reply, which then ends with OpenAI's error event.
    """

    scheme = "http"
    sse_error = (
        None,
        {"error": {"message": _SERVER_ERROR, "type": "server_error", "param": None, "code": None}},
    )

    def __init__(
        self,
        script: Sequence[ScriptedTurn],
        *,
        api_key: str = "sk-test-openai",
        outage: int | None = None,
        fail_after: int | None = None,
    ) -> None:
        super().__init__(api_key, outage=outage, fail_after=fail_after)
        self.script = script if isinstance(script, Script) else Script(script)
        self._cache = AutomaticPrefixCache()
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._handle)]

    @property
    def client_url(self) -> str:
        return self.base_url + "/v1"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{hashlib.sha1(str(next(self._ids)).encode()).hexdigest()[:24]}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = self.open_record(request)
        body = await self.read_body(request, record)
        try:
            self.gate(request)
            _validate(body)
            offered = [tool["function"]["name"] for tool in body.get("tools") or []]
            turn = self.script.check(last_user_or_tool_text(body["messages"]), offered)
        except ScriptMismatch as e:
            mismatch = Rejection(400, "fake_script_mismatch", str(e), param="messages")
            return self.reject(mismatch, record)
        except Rejection as rejection:
            return self.reject(rejection, record)
        self.script.advance()

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
            completion = self._completion(body, completion_id, turn, tool_calls, usage)
            return self.json_reply(record, completion, headers)

        response = await self.open_sse(request, record, headers)
        try:
            whole = await self._stream(
                response, record, body, completion_id, turn, tool_calls, usage
            )
            if not whole:
                self.script.give_back()
        finally:
            self.done(request, record)
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
        record: RequestRecord,
        body: dict[str, Any],
        completion_id: str,
        turn: ScriptedTurn,
        tool_calls: list[dict[str, Any]],
        usage: dict[str, Any],
    ) -> bool:
        """Stream the reply; False if `fail_after` cut it short."""
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

        events: list[Any] = [chunk(delta) for delta in deltas]
        events.append(chunk({}, "tool_calls" if tool_calls else "stop"))
        if include_usage:
            final = chunk({})
            final["choices"] = []
            final["usage"] = usage
            events.append(final)
        events.append("[DONE]")
        for data in events:
            if not await self.send_sse(response, record, data):
                return False
        return True

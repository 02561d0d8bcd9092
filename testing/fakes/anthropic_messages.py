"""A local Anthropic Messages server (``POST /v1/messages``) for tests.

It answers from a `Script` with Anthropic's named SSE events (or one JSON message when
not streaming), so pipecat's ``AnthropicLLMService`` and the ``anthropic`` SDK, beta
client included, run unchanged against it. It rejects what Anthropic rejects, in
Anthropic's error shape, and reports usage with Anthropic's explicit prompt caching,
tokens counted by `tollbridge.testing.fakes.tokens`:

- The prompt is a list of blocks in cache order: each tool, each system block, then each
  message content block (a string content counts as one text block).
- Only a prefix ending at a block with ``cache_control`` can be cached (a top-level
  ``cache_control`` marks the last block), and only if the whole prefix reaches the
  model's minimum (1024 tokens; 4096 for Haiku 4.5 and Opus 4.5/4.6, see
  `min_cacheable_tokens`). Breakpoints are keyed by model and exact prefix.
- A request first reads the longest cached prefix found at a block boundary up to 20
  blocks before one of its breakpoints (``cache_read_input_tokens``), then writes
  every later breakpoint (``cache_creation_input_tokens``, split into
  ``ephemeral_5m``/``ephemeral_1h`` by the ttl of the breakpoint closing each stretch).
- ``input_tokens`` is net: the tokens neither read nor written, which always include
  the few tokens that open the assistant's turn after the last block (`TURN_OPENER`),
  so it is never 0, as with the real API.
- ``output_tokens`` covers the reply text and each tool call's name and input. Usage in
  ``message_delta`` repeats the input counts: Anthropic's counts are cumulative.

Cache entries never expire: a fake lives for one test.
"""

import asyncio
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from tollbridge.testing.fakes.script import Script, ScriptedTurn, ScriptMismatch, fragments, words
from tollbridge.testing.fakes.server import FakeServer, Rejection, RequestRecord, ServerErrors
from tollbridge.testing.fakes.tokens import Segment, count_tokens, prefix_hashes, text_segment

API_VERSIONS = frozenset({"2023-06-01", "2023-01-01"})
TURN_OPENER = text_segment({"role": "assistant"})
"""The uncacheable tail every prompt ends with: the start of the reply."""
MAX_CACHE_BREAKPOINTS = 4
CACHE_LOOKBACK_BLOCKS = 20
"""How far before a breakpoint Anthropic looks for an earlier cache entry."""

_MIN_CACHEABLE_TOKENS = (
    ("claude-haiku-4-5", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-7", 2048),
    ("claude-3-5-haiku", 2048),
    ("claude-opus-5", 512),
)

def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix the model caches (a dated snapshot counts as its model)."""
    for prefix, tokens in _MIN_CACHEABLE_TOKENS:
        if model.startswith(prefix):
            return tokens
    return 1024


def content_blocks(content: Any) -> list[Any]:
    """A message's content as blocks: a string is one text block."""
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _bad(message: str) -> Rejection:
    """A request Anthropic refuses with 400 invalid_request_error."""
    return Rejection(400, "invalid_request_error", message)


def _check_version(version: str | None) -> None:
    """The ``anthropic-version`` header is required, and must name a version."""
    if version is None:
        raise _bad("anthropic-version: header is required")
    if version not in API_VERSIONS:
        raise _bad(f"anthropic-version: Unknown version {version!r}")


def _validate(body: Any) -> None:
    """Refuse what the real endpoint refuses, with its messages."""
    if not isinstance(body, dict):
        raise _bad("There was an issue with your request body: invalid JSON")
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            raise _bad(f"{field}: Field required")
    messages = body["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _bad("messages: Input should be a valid list")
    system = body.get("system", "")
    if not isinstance(system, str) and not (
        isinstance(system, list)
        and all(isinstance(b, dict) and b.get("type") == "text" for b in system)
    ):
        raise _bad("system: Input should be a valid string or a list of text blocks")
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not tool.get("name"):
            raise _bad(f"tools.{i}.name: Field required")
    open_tool_uses: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "system":
            raise _bad(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = content_blocks(message.get("content"))
        if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
            raise _bad(f"messages.{i}.content: Input should be a valid list")
        if not blocks and i < len(messages) - 1:
            raise _bad(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        for j, block in enumerate(blocks):
            if block.get("type") == "text" and not block.get("text"):
                raise _bad(
                    f"messages.{i}.content.{j}: text content blocks must be non-empty"
                )
        results = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        unexpected = results - open_tool_uses
        if unexpected:
            raise _bad(
                f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {', '.join(sorted(unexpected))}. Each `tool_result` block must "
                "have a corresponding `tool_use` block in the previous message."
            )
        if open_tool_uses - results:
            raise _bad(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(open_tool_uses - results))}. Each "
                "`tool_use` block must have a corresponding `tool_result` block in the next "
                "message."
            )
        open_tool_uses = (
            {b.get("id") for b in blocks if b.get("type") == "tool_use"}
            if role == "assistant"
            else set()
        )
    if open_tool_uses and messages[-1].get("role") == "assistant":
        raise _bad(
            f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` "
            f"blocks immediately after: {', '.join(sorted(open_tool_uses))}. Each `tool_use` "
            "block must have a corresponding `tool_result` block in the next message."
        )


@dataclass(frozen=True)
class _Block:
    """A prompt block in cache order, with the ttl of its breakpoint if it has one."""

    segment: Segment
    breakpoint_ttl: str | None


def _without_cache_control(block: dict[str, Any]) -> dict[str, Any]:
    """A breakpoint does not change what is cached, so it is not part of the key."""
    return {key: value for key, value in block.items() if key != "cache_control"}


def _ttl(block: Any) -> str | None:
    control = block.get("cache_control") if isinstance(block, dict) else None
    return control.get("ttl", "5m") if control else None


def prompt_blocks(body: dict[str, Any]) -> list[_Block]:
    """Tools, then system, then message content, each with its breakpoint."""
    blocks = [
        _Block(text_segment(_without_cache_control(tool)), _ttl(tool))
        for tool in body.get("tools") or []
    ]
    for block in content_blocks(body.get("system") or []):
        blocks.append(_Block(text_segment({"system": _without_cache_control(block)}), _ttl(block)))
    for message in body["messages"]:
        for block in content_blocks(message["content"]):
            piece = {"role": message["role"], "block": _without_cache_control(block)}
            blocks.append(_Block(text_segment(piece), _ttl(block)))
    if body.get("cache_control") and blocks:
        last = blocks[-1]
        blocks[-1] = _Block(last.segment, last.breakpoint_ttl or _ttl(body))
    return blocks


def _check_breakpoints(blocks: list[_Block]) -> None:
    ttls = [block.breakpoint_ttl for block in blocks if block.breakpoint_ttl]
    if len(ttls) > MAX_CACHE_BREAKPOINTS:
        raise _bad(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(ttls)}."
        )
    if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
        raise _bad(
            "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control "
            "block. Note that blocks are processed in the following order: `tools`, "
            "`system`, `messages`."
        )


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (tool results included), for the script."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        parts: list[str] = []
        for block in content_blocks(message.get("content")):
            if block.get("type") == "text":
                parts.append(block.get("text", ""))
            elif block.get("type") == "tool_result":
                result = block.get("content", "")
                parts.append(
                    result
                    if isinstance(result, str)
                    else " ".join(b.get("text", "") for b in result if b.get("type") == "text")
                )
        return " ".join(parts)
    return ""


class AnthropicMessagesFake(FakeServer[RequestRecord]):
    """Fake ``/v1/messages``; give the SDK ``base_url`` as is.

    Args:
        script: Replies, one per request, in order (see `ScriptedTurn`).
        api_key: The key clients must send as ``x-api-key``.
        outage, fail_after: The fault options (see `FakeServer`); `outage` answers
            Anthropic's error type for 529 (overloaded_error), 500 (api_error) or 429
            (rate_limit_error); `fail_after` counts the events of a streamed reply, which
            then ends with an overloaded_error ``error`` event.
        event_delay_s: Pause before each streamed event, so a test can cut a reply short.

    A scripted turn's ``tool_calls`` stream as one ``tool_use`` block each, in order,
    after its text block, all in the one message. ``replies`` logs every message the
    fake answered with; ``reported_usage`` holds, per streamed reply, the usage its
    events had reported when the stream ended or was cut (what Anthropic bills).
    """

    record_type = RequestRecord
    scheme = "http"
    streams_replies = True
    server_errors: ClassVar[ServerErrors] = {
        429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
        500: ("api_error", "Internal server error"),
        529: ("overloaded_error", "Overloaded"),
    }
    sse_error = (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )

    def __init__(
        self,
        script: Sequence[ScriptedTurn],
        *,
        api_key: str = "sk-ant-test",
        outage: int | None = None,
        fail_after: int | None = None,
        event_delay_s: float = 0.0,
    ) -> None:
        super().__init__(api_key, outage=outage, fail_after=fail_after)
        self.script = script if isinstance(script, Script) else Script(script)
        self.event_delay_s = event_delay_s
        self.replies: list[dict[str, Any]] = []
        self.reported_usage: list[dict[str, Any]] = []
        self._cached_prefixes: set[tuple[str, str]] = set()  # (model, prefix hash)
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._handle)]

    def authorize(self, request: web.Request) -> None:
        key = request.headers.get("x-api-key")
        if key is None:
            raise Rejection(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            raise Rejection(401, "authentication_error", "invalid x-api-key")

    def error_response(self, rejection: Rejection, record: RequestRecord) -> web.Response:
        """``{"type": "error", "error": {type, message}, "request_id"}``, the id in a header too."""
        body = {
            "type": "error",
            "error": {"type": rejection.code, "message": rejection.message},
            "request_id": record.request_id,
        }
        headers = {"request-id": record.request_id}
        return web.json_response(body, status=rejection.status, headers=headers)

    def _next_id(self, prefix: str) -> str:
        digest = hashlib.sha1(str(next(self._ids)).encode()).hexdigest()[:22]
        return f"{prefix}01{digest}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = self.open_record(request)
        record.request_id = self._next_id("req_")
        body = await self.read_body(request, record)
        try:
            self.gate(request)
            _check_version(request.headers.get("anthropic-version"))
            _validate(body)
            blocks = prompt_blocks(body)
            _check_breakpoints(blocks)
            offered = [tool["name"] for tool in body.get("tools") or []]
            turn = self.script.check(last_user_text(body["messages"]), offered)
        except ScriptMismatch as e:
            return self.reject(_bad(str(e)), record)
        except Rejection as rejection:
            return self.reject(rejection, record)
        self.script.advance()

        usage = self._usage(body["model"], blocks, turn)
        content: list[dict[str, Any]] = [{"type": "text", "text": turn["text"]}] if turn.get("text") else []
        content += [
            {
                "type": "tool_use",
                "id": self._next_id("toolu_"),
                "name": c["name"],
                "input": c["arguments"],
            }
            for c in turn.get("tool_calls", [])
        ]
        message: dict[str, Any] = {
            "id": self._next_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "tool_use" if turn.get("tool_calls") else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        headers = {"request-id": record.request_id}
        self.replies.append(message)

        if not body.get("stream"):
            return self.json_reply(record, message, headers)

        response = await self.open_sse(request, record, headers)
        try:
            if not await self._stream(response, record, message):
                self.script.give_back()
        finally:
            self.done(request, record)
        return response

    def _usage(self, model: str, blocks: list[_Block], turn: ScriptedTurn) -> dict[str, Any]:
        """Read the longest cached prefix, write the later breakpoints, count the rest."""
        hashes = prefix_hashes([block.segment for block in blocks])
        ends = list(itertools.accumulate(block.segment.tokens for block in blocks))
        breakpoints = [i for i, block in enumerate(blocks) if block.breakpoint_ttl]
        candidates = {
            i
            for b in breakpoints
            for i in range(max(0, b - CACHE_LOOKBACK_BLOCKS + 1), b + 1)
            if (model, hashes[i]) in self._cached_prefixes
        }
        read_end = max(candidates, default=-1)
        read = ends[read_end] if read_end >= 0 else 0

        written = {"5m": 0, "1h": 0}
        start = read
        minimum = min_cacheable_tokens(model)
        for b in breakpoints:
            if b <= read_end or ends[b] < minimum:
                continue
            written[blocks[b].breakpoint_ttl or "5m"] += ends[b] - start
            start = ends[b]
            self._cached_prefixes.add((model, hashes[b]))

        created = written["5m"] + written["1h"]
        output = count_tokens(turn.get("text", "")) + sum(
            count_tokens(call["name"] + json.dumps(call["arguments"], ensure_ascii=False))
            for call in turn.get("tool_calls", [])
        )
        total = (ends[-1] if ends else 0) + TURN_OPENER.tokens
        return {
            "input_tokens": total - read - created,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": written["5m"],
                "ephemeral_1h_input_tokens": written["1h"],
            },
            "output_tokens": output,
            "service_tier": "standard",
        }

    async def _stream(
        self, response: web.StreamResponse, record: RequestRecord, message: dict[str, Any]
    ) -> bool:
        """Stream the reply as Anthropic's events; False if `fail_after` cut it short."""
        usage = message["usage"]
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**usage, "output_tokens": 1},
        }
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            ("ping", {"type": "ping"}),
        ]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                events.append(
                    (
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                )
                events += [
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                    for piece in words(block["text"])
                ]
            else:
                events.append(
                    (
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {**block, "input": {}},
                        },
                    )
                )
                events += [
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                    for piece in ["", *fragments(json.dumps(block["input"], ensure_ascii=False), 6)]
                ]
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))

        delta_usage = {key: usage[key] for key in usage if key != "service_tier"}
        events += [
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": delta_usage,
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        for name, data in events:
            if self.event_delay_s:
                await asyncio.sleep(self.event_delay_s)
            if not await self.send_sse(response, record, data, event=name):
                return False
            # Usage an event carries replaces what the reply had reported so far.
            if name == "message_start":
                self.reported_usage.append({})
            event_usage = data["message"]["usage"] if name == "message_start" else data.get("usage")
            if event_usage:
                self.reported_usage[-1].update(event_usage)
        return True

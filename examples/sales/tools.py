"""BrightPath's qualification tools: BANT answers scored during the call, one outcome per lead.

Each call ends in one JSON line in the results file (``BRIGHTPATH_RESULTS``,
default ``brightpath_leads.jsonl`` in the working directory): qualified or not
with its score, not interested, or voicemail. The line carries the call_sid,
so a lead's result can be joined with what its call cost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tollbridge.tools import Tool, ToolContext

QUESTIONS = ("budget", "authority", "need", "timeline")
MAX_SCORE = 3
QUALIFIED_AT = 8
"""Total BANT score (of 12) from which a lead goes to an account executive."""


def results_path() -> Path:
    return Path(os.environ.get("BRIGHTPATH_RESULTS") or "brightpath_leads.jsonl")


def _append(path: Path, line: str) -> None:
    """One write per line in append mode, so concurrent calls never interleave lines."""
    with path.open("a", encoding="utf-8") as file:
        file.write(line)


async def _record_outcome(call: ToolContext, outcome: str, **fields: Any) -> dict[str, Any]:
    """Write the call's one result line; a later outcome of the same call is only noted."""
    if "outcome" in call.state:
        return {"note": f"this call was already recorded as {call.state['outcome']}"}
    record = {
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "call_sid": call.call_sid,
        "tenant": call.tenant,
        "caller": call.caller,
        "callee": call.callee,  # the lead, on an outbound call
        "outcome": outcome,
        **fields,
        "answers": call.state.get("answers", {}),
    }
    await asyncio.to_thread(_append, results_path(), json.dumps(record) + "\n")
    call.state["outcome"] = outcome
    return {}


def _score(value: Any) -> int:
    """0 to 3; models sometimes send "2" or 2.0 for 2."""
    try:
        points = Decimal(str(value))
    except InvalidOperation:
        points = Decimal(-1)
    if isinstance(value, bool) or points not in range(MAX_SCORE + 1):
        raise ValueError(f"score must be a whole number from 0 to {MAX_SCORE}")
    return int(points)


async def _hang_up(call: ToolContext) -> None:
    if call.end_call:
        await call.end_call()


async def record_answer(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    question = str(args.get("question", "")).strip().lower()
    if question not in QUESTIONS:
        raise ValueError(f"question must be one of {', '.join(QUESTIONS)}")
    answer = str(args.get("answer", "")).strip()
    if not answer:
        raise ValueError("answer is required: a short summary of what the prospect said")
    answers = call.state.setdefault("answers", {})
    answers[question] = {"answer": answer, "score": _score(args.get("score"))}
    return {"recorded": question, "still_to_ask": [q for q in QUESTIONS if q not in answers]}


async def finish_qualification(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    answers = call.state.get("answers", {})
    missing = [q for q in QUESTIONS if q not in answers]
    if missing:
        raise ValueError(
            f"not yet answered: {', '.join(missing)}; ask, or record a score of 0 "
            "if the prospect will not say"
        )
    score = sum(answer["score"] for answer in answers.values())
    verdict = "qualified" if score >= QUALIFIED_AT else "not_qualified"
    scored = {"score": score, "max_score": MAX_SCORE * len(QUESTIONS)}
    return scored | {"verdict": verdict} | await _record_outcome(call, verdict, **scored)


async def mark_not_interested(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    """Record the refusal and hang up after the apology the model says next."""
    reason = str(args.get("reason", "")).strip() or "not given"
    note = await _record_outcome(call, "not_interested", reason=reason)
    await _hang_up(call)
    return {"recorded": "not_interested", "call_ends_after_your_reply": True} | note


async def voicemail_detected(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    """Record the voicemail and hang up after the short message the prompt allows."""
    note = await _record_outcome(call, "voicemail")
    await _hang_up(call)
    return {"recorded": "voicemail", "call_ends_after_your_reply": True} | note


async def end_call(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    """Hang up once the goodbye the model is about to say has been heard."""
    await _hang_up(call)
    return {"ending_call": True}


TOOLS = [
    Tool(
        name="record_answer",
        description=(
            "Record the prospect's answer to one BANT question as soon as they give it, "
            "with your score: 0 none or unknown, 1 weak, 2 good, 3 strong."
        ),
        handler=record_answer,
        properties={
            "question": {"type": "string", "enum": list(QUESTIONS)},
            "answer": {"type": "string", "description": "What they said, in a few words."},
            "score": {"type": "integer", "minimum": 0, "maximum": MAX_SCORE},
        },
        required=["question", "answer", "score"],
    ),
    Tool(
        name="finish_qualification",
        description="After all four answers: total the score and record the lead's verdict.",
        handler=finish_qualification,
    ),
    Tool(
        name="mark_not_interested",
        description=(
            "The prospect is not interested or asks not to be called: record it. "
            "The call ends after your next reply, so make that an apology and goodbye."
        ),
        handler=mark_not_interested,
        properties={"reason": {"type": "string", "description": "Their reason, if they gave one."}},
    ),
    Tool(
        name="voicemail_detected",
        description=(
            "You reached a voicemail or answering machine: record it. "
            "The call ends after your next reply."
        ),
        handler=voicemail_detected,
    ),
    Tool(
        name="end_call",
        description="Hang up after your goodbye.",
        handler=end_call,
    ),
]

"""BrightPath's qualification tools: BANT scoring and the one JSON line each call leaves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import ExampleTools

LEAD = "+15550123456"


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "leads.jsonl"
    monkeypatch.setenv("BRIGHTPATH_RESULTS", str(path))
    return path


@pytest.fixture
def sales() -> ExampleTools:
    return ExampleTools("sales", "brightpath")


def lines(path: Path) -> list[dict[str, Any]]:
    """The results file's records (none if it was never written)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def answer_all(sales: ExampleTools, call: Any, scores: dict[str, Any]) -> None:
    for question, score in scores.items():
        await sales.run(
            "record_answer", call, question=question, answer=f"{question} answer", score=score
        )


async def test_a_qualified_lead_is_scored_and_written_once(
    sales: ExampleTools, results: Path
) -> None:
    call = sales.call(call_sid="CAqualified", caller="+15550100300", callee=LEAD)
    first = await sales.run(
        "record_answer", call, question="Budget", answer="about $20k this year", score=2
    )
    assert first == {"recorded": "budget", "still_to_ask": ["authority", "need", "timeline"]}
    await answer_all(sales, call, {"authority": 3, "need": "3", "timeline": 2.0})
    verdict = await sales.run("finish_qualification", call)
    assert verdict == {"score": 10, "max_score": 12, "verdict": "qualified"}

    [line] = lines(results)
    assert line["call_sid"] == "CAqualified" and line["tenant"] == "brightpath"
    assert (line["caller"], line["callee"]) == ("+15550100300", LEAD)
    assert (line["outcome"], line["score"], line["max_score"]) == ("qualified", 10, 12)
    assert line["answers"] == {
        "budget": {"answer": "about $20k this year", "score": 2},
        "authority": {"answer": "authority answer", "score": 3},
        "need": {"answer": "need answer", "score": 3},
        "timeline": {"answer": "timeline answer", "score": 2},
    }
    again = await sales.run("finish_qualification", call)
    assert again["note"] == "this call was already recorded as qualified"
    assert len(lines(results)) == 1
    assert sales.hung_up == []  # the agent still says what happens next, then ends the call


@pytest.mark.parametrize(
    ("scores", "verdict"), [((2, 2, 2, 2), "qualified"), ((3, 3, 1, 0), "not_qualified")]
)
async def test_eight_of_twelve_qualifies(
    sales: ExampleTools, results: Path, scores: tuple[int, ...], verdict: str
) -> None:
    call = sales.call()
    await answer_all(
        sales, call, dict(zip(("budget", "authority", "need", "timeline"), scores, strict=True))
    )
    assert (await sales.run("finish_qualification", call))["verdict"] == verdict
    assert lines(results)[0]["outcome"] == verdict


async def test_finishing_early_or_bad_answers_are_errors_for_the_model(
    sales: ExampleTools, results: Path
) -> None:
    call = sales.call()
    await sales.run("record_answer", call, question="need", answer="their CRM is failing", score=3)
    with pytest.raises(ValueError, match="not yet answered: budget, authority, timeline"):
        await sales.run("finish_qualification", call)
    for bad in (4, -1, 1.5, "high", None, True):
        with pytest.raises(ValueError, match="score must be a whole number from 0 to 3"):
            await sales.run("record_answer", call, question="budget", answer="x", score=bad)
    with pytest.raises(ValueError, match="question must be one of"):
        await sales.run("record_answer", call, question="price", answer="x", score=1)
    assert lines(results) == []


async def test_not_interested_is_recorded_and_the_call_ends(
    sales: ExampleTools, results: Path
) -> None:
    call = sales.call(callee=LEAD)
    await sales.run("record_answer", call, question="budget", answer="none", score=0)
    reply = await sales.run("mark_not_interested", call, reason="take me off your list")
    assert reply == {"recorded": "not_interested", "call_ends_after_your_reply": True}
    assert sales.hung_up == [call.call_sid]
    [line] = lines(results)
    assert (line["outcome"], line["reason"]) == ("not_interested", "take me off your list")
    assert line["answers"] == {"budget": {"answer": "none", "score": 0}}


async def test_voicemail_is_recorded_and_the_call_ends(sales: ExampleTools, results: Path) -> None:
    call = sales.call()
    assert (await sales.run("voicemail_detected", call))["recorded"] == "voicemail"
    assert sales.hung_up == [call.call_sid]
    assert lines(results)[0]["outcome"] == "voicemail"


async def test_results_default_to_the_working_directory(
    sales: ExampleTools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRIGHTPATH_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    await sales.run("voicemail_detected")
    assert lines(tmp_path / "brightpath_leads.jsonl")[0]["outcome"] == "voicemail"

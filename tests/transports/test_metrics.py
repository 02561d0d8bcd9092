"""/metrics: the bridge's calls in Prometheus' text format, behind the API token."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import running_bridge
from tests.transports.test_bridge_calls import final, script
from tollbridge.testing.cassette import Cassette

pytestmark = pytest.mark.long(10)

TOKEN = "metrics-token-0123456789"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_finished_call_is_counted_with_its_cost_and_strangers_see_nothing(frontdesk):
    cassette = Cassette(
        stt=[final(4.0, "what are your opening hours")],
        llm=[{"match": "opening hours", "text": "We are open Monday to Friday, eight to six."}],
    )
    async with running_bridge(frontdesk, cassette) as running:
        running.bridge.settings.api_token = TOKEN
        async with httpx.AsyncClient(base_url=running.url) as client:
            before = samples((await client.get(
                "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text)
            phone = asyncio.create_task(running.softphone().call(script()))
            async with asyncio.timeout(10):
                while not running.bridge.sessions:
                    await asyncio.sleep(0.02)
            during = samples((await client.get(
                "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text)
            await phone
            [usage] = await running.finished()
            stranger = await client.get("/metrics")
            forged = await client.get("/metrics", headers={"Authorization": "Bearer guess"})
            after = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert stranger.status_code == forged.status_code == 401
    assert "tollbridge" not in stranger.text
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    assert before[("tollbridge_active_calls", frozenset())] == 0
    assert during[("tollbridge_active_calls", frozenset())] == 1
    got = samples(after.text)
    cost = running.bridge.pricer(usage)
    who = {("tenant", "acme"), ("vertical", "frontdesk")}
    assert got[("tollbridge_calls_total", frozenset(who | {("ended_by", cost.ended_by)}))] == 1
    assert got[("tollbridge_call_cost_usd_count", frozenset(who))] == 1
    assert got[("tollbridge_call_cost_usd_sum", frozenset(who))] == pytest.approx(
        float(cost.total_usd))
    spent = {dict(labels)["kind"]: value for (name, labels), value in got.items()
             if name == "tollbridge_spend_usd_total"}
    assert {"stt", "llm.input", "tts", "media_streams"} <= set(spent)
    assert sum(spent.values()) == pytest.approx(float(cost.total_usd))
    assert got[("tollbridge_active_calls", frozenset())] == 0

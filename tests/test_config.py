"""Vertical config validation: every class of mistake gets a message naming file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tollbridge.config import DEFAULT_APOLOGY, ConfigError, e164, load_vertical, load_verticals
from tollbridge.costs.catalog import Catalog
from tollbridge.prompt_caching import caching_warnings, minimum_tokens

GOOD = """
name = "salon"
tenant = "glambook"
numbers = ["+15550100200"]

[[chain]]
use = "twilio"
[[chain]]
use = "deepgram.stt"
[[chain]]
use = "openai.llm"
model = "gpt-4o-mini"
prompt = "prompt.md"
[[chain]]
use = "deepgram.tts"
[[chain]]
use = "cost.meter"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "prompt.md").write_text("You are a receptionist.")
    path = tmp_path / "vertical.toml"
    path.write_text(text)
    return path


def problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_vertical(path, **kwargs)
    return error.value.problems


def test_a_good_vertical_loads_with_typed_options(tmp_path):
    vertical = load_vertical(write(tmp_path, GOOD))
    assert [stage.name for stage in vertical.chain] == [
        "twilio", "deepgram.stt", "openai.llm", "deepgram.tts", "cost.meter",
    ]
    llm = vertical.chain[2].options
    assert llm.model == "gpt-4o-mini"
    assert llm.prompt == str((tmp_path / "prompt.md").resolve())
    assert vertical.chain[1].options.encoding == "mulaw"


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, GOOD.replace('tenant = "glambook"', "tenant = glambook"))
    [message] = problems(path)
    assert message.startswith(f"{path}: TOML syntax error: ")
    assert "line 3" in message


def test_unknown_kind_lists_the_registered_kinds(tmp_path):
    path = write(tmp_path, GOOD.replace('use = "deepgram.stt"', 'use = "deepgram.sst"'))
    [message] = problems(path)
    assert message.startswith(
        f'{path}: chain[1].use: unknown stage kind "deepgram.sst"; did you mean "deepgram.stt"? '
        "(registered kinds: "
    )
    for kind in ("anthropic.llm", "cost.meter", "elevenlabs.tts", "openai.llm", "twilio"):
        assert kind in message


def test_unknown_option_is_named(tmp_path):
    path = write(tmp_path, GOOD.replace('use = "deepgram.tts"', 'use = "deepgram.tts"\nvoise = "x"'))
    assert problems(path) == [f'{path}: chain[3].voise: unknown option; did you mean "voice"?']


def test_unknown_option_lists_the_options_when_none_is_close(tmp_path):
    path = write(tmp_path, GOOD.replace('use = "deepgram.tts"', 'use = "deepgram.tts"\nzzz = 1'))
    [message] = problems(path)
    assert message.startswith(f"{path}: chain[3].zzz: unknown option (options: api_key_env, ")
    assert "voice" in message


def test_wrong_type_says_what_was_expected_and_what_came(tmp_path):
    path = write(tmp_path, GOOD.replace('use = "deepgram.stt"', 'use = "deepgram.stt"\ninterim_results = "yes"'))
    assert problems(path) == [
        f"{path}: chain[1].interim_results: Input should be a valid boolean (got 'yes')"
    ]


def test_missing_required_key(tmp_path):
    path = write(tmp_path, GOOD.replace('tenant = "glambook"\n', ""))
    assert problems(path) == [f"{path}: tenant: required key is missing"]


def test_unknown_model_suggests_the_close_one(tmp_path):
    path = write(tmp_path, GOOD.replace('"gpt-4o-mini"', '"gpt-4o-mni"'))
    assert problems(path) == [
        f'{path}: chain[2].model: unknown model "gpt-4o-mni" for openai.llm; '
        'did you mean "gpt-4o-mini"?'
    ]


def test_missing_api_key_names_the_variable_only_when_keys_are_checked(tmp_path):
    path = write(tmp_path, GOOD)
    env = {"DEEPGRAM_API_KEY": "dg"}
    load_vertical(path, env=env)  # plain validation needs no keys
    assert problems(path, env=env, check_keys=True) == [
        f"{path}: chain[2].api_key_env: environment variable OPENAI_API_KEY is not set"
    ]
    load_vertical(path, env={**env, "OPENAI_API_KEY": "sk"}, check_keys=True)


def test_env_references_are_substituted_and_missing_ones_reported(tmp_path):
    text = GOOD.replace('use = "openai.llm"', 'use = "openai.llm"\nbase_url = "${LLM_PROXY}"')
    path = write(tmp_path, text)
    keys = {"DEEPGRAM_API_KEY": "dg", "OPENAI_API_KEY": "sk"}
    vertical = load_vertical(path, env={**keys, "LLM_PROXY": "https://proxy.example/v1"})
    assert vertical.chain[2].options.base_url == "https://proxy.example/v1"
    assert problems(path, env=keys) == [
        f"{path}: chain[2].base_url: environment variable LLM_PROXY is not set"
    ]


def test_a_secret_written_in_the_file_is_refused(tmp_path):
    path = write(tmp_path, GOOD.replace('model = "gpt-4o-mini"', 'model = "gpt-4o-mini"\napi_key = "sk-live-123"'))
    [message] = problems(path)
    assert message.startswith(f"{path}: chain[2].api_key: secrets are never written in the file")
    assert "sk-live-123" not in message


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        (["deepgram.stt", "twilio", "openai.llm", "deepgram.tts"],
         "chain[1].use: the transport must be the first stage"),
        (["twilio", "deepgram.stt", "deepgram.tts", "openai.llm"],
         "chain[2].use: deepgram.tts (tts) cannot come before openai.llm (llm); "
         "the order is stt → llm → tts"),
        (["twilio", "twilio", "deepgram.stt", "openai.llm", "deepgram.tts"],
         "chain[1].use: a chain has exactly one transport"),
        (["deepgram.stt", "openai.llm", "deepgram.tts"],
         'chain: no transport stage; the first stage must be one (e.g. "twilio")'),
        (["twilio", "openai.llm", "deepgram.tts"],
         "chain: no stt stage; a cascaded chain needs stt → llm → tts"),
    ],
)
def test_impossible_chains_are_rejected_before_anything_starts(tmp_path, chain, expected):
    stages = "".join(f'[[chain]]\nuse = "{kind}"\n' for kind in chain)
    text = 'name = "x"\ntenant = "t"\n' + stages
    path = write(tmp_path, text)
    assert f"{path}: {expected}" in problems(path)


def test_missing_prompt_file_names_where_it_looked(tmp_path):
    path = write(tmp_path, GOOD.replace('"prompt.md"', '"prompts/nope.md"'))
    [message] = problems(path)
    assert re.match(rf'{re.escape(str(path))}: chain\[2\].prompt: file "prompts/nope.md" not found', message)


def test_bad_phone_number_and_several_problems_reported_together(tmp_path):
    text = GOOD.replace('"+15550100200"', '"555-0100"').replace('use = "deepgram.tts"', 'use = "deepgram.tts"\nspeed = 9')
    path = write(tmp_path, text)
    assert problems(path) == [
        f'{path}: numbers[0]: "555-0100" is not an E.164 phone number (like +15550100200)'
    ]


def test_every_shipped_example_validates():
    examples = Path(__file__).parent.parent / "examples"
    verticals = load_verticals(examples)
    assert {"salon", "sales", "real_estate"} <= {v.name for v in verticals}


def test_a_stage_without_a_price_is_refused_naming_the_priced_alternatives(tmp_path):
    path = write(tmp_path, GOOD.replace('use = "deepgram.stt"', 'use = "deepgram.stt"\nmodel = "nova-2"'))
    [problem] = problems(path)
    assert problem.startswith(f"{path}: chain[1].model: \"nova-2\" has no deepgram stt price")
    assert "priced: nova-3, nova-3-multilingual, flux-general-en" in problem


def test_a_fallback_without_a_price_is_refused_too(tmp_path):
    text = GOOD.replace('use = "deepgram.tts"', 'use = "deepgram.tts"\nvoice = "aura-2-thalia-en"\n'
                        'fallback = { use = "elevenlabs.tts", model = "eleven_v3" }')
    catalog = Catalog.load()
    without_v3 = Catalog("t", catalog.as_of, [r for r in catalog.rows if r.model != "eleven_v3"])
    [problem] = problems(write(tmp_path, text), catalog=without_v3)
    assert 'chain[3].fallback.model: "eleven_v3" has no elevenlabs tts price' in problem
    assert "eleven_flash_v2_5" in problem
    assert load_vertical(tmp_path / "vertical.toml").chain[3].fallback is not None


def test_a_vertical_price_override_makes_the_stage_valid(tmp_path):
    text = GOOD.replace('use = "deepgram.stt"', 'use = "deepgram.stt"\nmodel = "nova-2"') + """
[[prices]]
provider = "deepgram"
item = "stt"
model = "nova-2"
usd = 0.0043
unit = "minute"
granularity = "second"
date = 2026-12-01
"""
    vertical = load_vertical(write(tmp_path, text))
    assert vertical.chain[1].options.model == "nova-2"
    bad = text.replace('unit = "minute"\n', "")  # a new row must say its unit
    [problem] = problems(write(tmp_path, bad))
    assert "prices: overrides: override 1 (deepgram stt nova-2)" in problem
    per_char = text.replace('unit = "minute"', 'unit = "1k chars"').replace(
        'granularity = "second"', 'granularity = "unit"')
    [problem] = problems(write(tmp_path, per_char))  # audio cannot be billed per character
    assert 'chain[1].model: "nova-2": catalog row' in problem and "per minute or second" in problem


def test_prompt_caching_that_cannot_take_effect_is_named_per_stage(tmp_path):
    def vertical_with(prompt: str, name: str, chain: str = GOOD):
        (tmp_path / name).write_text(prompt)  # prompts are read once per process: one file each
        return load_vertical(write(tmp_path, chain.replace('"prompt.md"', f'"{name}"')))

    [warning] = caching_warnings(vertical_with("You are a receptionist.", "short.md"))
    assert warning.startswith("chain[2] (openai.llm): prompt caching cannot take effect")
    assert "~6 tokens" in warning and "minimum of 1024" in warning
    long = "You are a receptionist. " * 200  # ~1,200 tokens
    assert caching_warnings(vertical_with(long, "long.md")) == []
    templated = "Today is {date}; the caller is {{caller}}. " + long
    [varying] = caching_warnings(vertical_with(templated, "templated.md"))
    assert "the prompt's {date} (line 1) looks filled in per call" in varying
    assert caching_warnings(vertical_with(long + "Today is {date}.", "late.md")) == []  # OpenAI
    anthropic = GOOD.replace('use = "openai.llm"\nmodel = "gpt-4o-mini"',
                             'use = "anthropic.llm"\nmodel = "claude-haiku-4-5"')
    [haiku] = caching_warnings(vertical_with(long, "haiku.md", anthropic))
    assert "claude-haiku-4-5's minimum of 4096" in haiku  # per model: Haiku 4.5 needs 4,096
    assert minimum_tokens("anthropic", "claude-sonnet-4-5") == 1024
    assert minimum_tokens("anthropic", "claude-opus-4-7") == 2048
    assert minimum_tokens("acme", "x") is None


@pytest.mark.parametrize(("number", "why"), [
    ("+1555", "too short"),
    ("+1555010020000", "too long"),
    ("+15550100200 ext. 12", "an extension cannot be dialled"),
    ("+abc", "the string supplied did not seem to be a phone number"),
])
def test_phone_numbers_say_why_they_are_not_e164(number, why):
    with pytest.raises(ValueError, match=re.escape(f'"{number}" is not an E.164 phone number '
                                                   f"(like +15550100200): {why}")):
        e164(number)


def test_phone_numbers_are_stored_in_e164_whatever_the_spacing(tmp_path):
    assert e164("+1 (555) 010-0200") == "+15550100200" == e164("+15550100200")
    path = write(tmp_path, GOOD.replace('"+15550100200"', '"+1 555 010 0200"'))
    assert load_vertical(path).numbers == ["+15550100200"]


def test_the_failure_policy_defaults_to_an_apology_and_a_hang_up(tmp_path):
    vertical = load_vertical(write(tmp_path, GOOD))
    assert vertical.on_failure.apology == DEFAULT_APOLOGY
    assert vertical.on_failure.transfer_to is None
    assert vertical.on_failure.phrase in vertical.fixed_phrases  # the phrase cache has it ready


def test_a_transfer_number_is_checked_and_named_by_its_key(tmp_path):
    policy = '\n[on_failure]\napology = "One moment."\ntransfer_to = "+15550107777"\n'
    vertical = load_vertical(write(tmp_path, GOOD.replace("\n[[chain]]", policy + "\n[[chain]]", 1)))
    assert (vertical.on_failure.transfer_to, vertical.on_failure.apology) == ("+15550107777", "One moment.")
    assert vertical.on_failure.phrase == vertical.on_failure.transfer_message
    bad = '\n[on_failure]\ntransfer_to = "555-0100"\napolgy = "Sorry."\n'
    path = write(tmp_path, GOOD.replace("\n[[chain]]", bad + "\n[[chain]]", 1))
    assert problems(path) == [
        f'{path}: on_failure.transfer_to: "555-0100" is not an E.164 phone number (like +15550100200)',
        f"{path}: on_failure.apolgy: unknown option",
    ]


def test_the_schema_describes_the_failure_policy():
    from tollbridge.schema import vertical_schema

    schema = vertical_schema()
    assert "on_failure" in schema["properties"]
    policy = schema["$defs"]["OnFailure"]["properties"]
    assert set(policy) == {"apology", "transfer_to", "transfer_message"}
    assert policy["apology"]["default"] == DEFAULT_APOLOGY


def test_only_an_outbound_vertical_leaves_voicemail(tmp_path):
    voicemail = '[telephony]\ndirection = "{}"\nvoicemail = "Please call us back."\n'
    inbound = write(tmp_path, GOOD + voicemail.format("inbound"))
    [message] = problems(inbound)
    assert message.endswith("telephony.voicemail: only outbound calls detect answering machines "
                            "(direction is inbound)")
    outbound = load_vertical(write(tmp_path, GOOD + voicemail.format("outbound")))
    assert outbound.telephony.voicemail == "Please call us back."

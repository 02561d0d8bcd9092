"""Settings from the environment: defaults, secrets kept out of print, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollbridge.settings import SettingsError, load_settings

VARIABLES = ("TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_API_BASE_URL",
             "TOLLBRIDGE_API_TOKEN", "TOLLBRIDGE_SPOOL", "TOLLBRIDGE_LOG_LEVEL",
             "TOLLBRIDGE_DRAIN_GRACE_S", "TOLLBRIDGE_IDLE_STREAM_S",
             "TOLLBRIDGE_PENDING_CALLBACK_TTL_S")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_unset_and_empty_variables_take_the_defaults(monkeypatch):
    monkeypatch.setenv("TWILIO_API_BASE_URL", "")
    settings = load_settings()
    assert settings.twilio_api_base_url is None
    assert settings.tollbridge_spool == Path("tollbridge-ledger.spool")
    assert settings.tollbridge_log_level == "WARNING"
    assert not settings.can_dial


def test_tokens_never_print(monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "twilio-secret-123")
    monkeypatch.setenv("TOLLBRIDGE_API_TOKEN", "api-secret-456")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "1" * 32)
    settings = load_settings()
    for shown in (str(settings), repr(settings), settings.model_dump_json()):
        assert "secret" not in shown
    assert settings.twilio_auth_token.get_secret_value() == "twilio-secret-123"
    assert settings.can_dial


def test_the_log_level_is_case_insensitive_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv("TOLLBRIDGE_LOG_LEVEL", "info")
    assert load_settings().tollbridge_log_level == "INFO"
    monkeypatch.setenv("TOLLBRIDGE_LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "environment variable TOLLBRIDGE_LOG_LEVEL='LOUD': input should be "
        "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"
    )


def test_the_lifecycle_timeouts_have_defaults_and_refuse_nonsense(monkeypatch):
    settings = load_settings()
    assert (settings.tollbridge_drain_grace_s, settings.tollbridge_idle_stream_s,
            settings.tollbridge_pending_callback_ttl_s) == (30.0, 30.0, 3600.0)
    monkeypatch.setenv("TOLLBRIDGE_DRAIN_GRACE_S", "0")  # no grace: the farewell at once
    assert load_settings().tollbridge_drain_grace_s == 0
    monkeypatch.setenv("TOLLBRIDGE_IDLE_STREAM_S", "0")
    with pytest.raises(SettingsError, match="TOLLBRIDGE_IDLE_STREAM_S='0': input should be greater than 0"):
        load_settings()

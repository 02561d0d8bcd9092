"""The process's settings, read from the environment in one place.

A bad value fails at start-up with one line naming the variable, instead of
deep inside a call. Secrets are `SecretStr`, so printing the settings or
logging them never shows a token. Provider keys are not here: each stage
names its own variable (`api_key_env`) and the vertical config checks it.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    SecretStr,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollbridge.errors import TollbridgeError

LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    BeforeValidator(lambda value: value.upper() if isinstance(value, str) else value),
]


class SettingsError(TollbridgeError, ValueError):
    """An environment variable holds a value tollbridge cannot use."""


class Settings(BaseSettings):
    """Each field reads the environment variable of the same name, upper-cased."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)

    twilio_auth_token: SecretStr = SecretStr("")
    """Checks Twilio's request signatures; with the account SID, places outbound calls."""
    twilio_account_sid: str = ""
    """Outbound calls, and Twilio's own price for each call."""
    twilio_api_base_url: str | None = None
    """Twilio's REST API somewhere else: a regional edge, a proxy, a local fake."""
    tollbridge_api_token: SecretStr = SecretStr("")
    """Bearer token for the bridge's `POST /calls`; unset turns that endpoint off."""
    tollbridge_margin_floor: Decimal | None = Field(None, ge=0)
    """USD per minute a call should cost at most: the dashboard flags the calls above it."""
    tollbridge_spool: Path = Path("tollbridge-ledger.spool")
    """Where ledger writes wait while the database is down."""
    tollbridge_log_level: LogLevel = "WARNING"
    tollbridge_drain_grace_s: NonNegativeFloat = 30.0
    """On SIGTERM/SIGINT, how long calls in flight may go on before the farewell ends them."""
    tollbridge_idle_stream_s: PositiveFloat = 30.0
    """A Media Stream with no media for this long is ended (Twilio sends 20 ms even of silence)."""
    tollbridge_pending_callback_ttl_s: PositiveFloat = 3600.0
    """A status or recording callback for a call never recorded is dropped after this long."""

    @property
    def can_dial(self) -> bool:
        """Whether Twilio's REST API can be used: it needs both the SID and the token."""
        return bool(self.twilio_account_sid and self.twilio_auth_token.get_secret_value())


def load_settings() -> Settings:
    """The settings from the environment, or a `SettingsError` naming each bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError("\n".join(_problem(item) for item in error.errors())) from None


def _problem(item: Any) -> str:
    field = str(item["loc"][0])
    name = field.upper()
    message = item["msg"][:1].lower() + item["msg"][1:]
    if isinstance(Settings.model_fields[field].default, SecretStr):
        return f"environment variable {name}: {message}"
    return f"environment variable {name}={item['input']!r}: {message}"

"""Vertical config files: TOML in, a validated `Vertical` out, or errors that say where.

Every error names the file, the key path and what was expected, e.g.
``examples/salon/vertical.toml: chain[2].model: unknown model "gpt-4o-mni" for
openai.llm; did you mean "gpt-4o-mini"?``. All errors of a file are reported
at once. ``${NAME}`` in a string is read from the environment (a name that is
not set is an error naming the key); secrets are never written in the file
itself: a stage names the variable holding its key with `api_key_env`, checked
only where a call would need it (`serve`, `validate --keys`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from tollbridge.agents import Agent, AgentFile, load_agents
from tollbridge.costs.catalog import Catalog, CatalogError
from tollbridge.errors import TollbridgeError
from tollbridge.registry import Registry, default_registry
from tollbridge.stage import (
    BRAIN_ROLES,
    PROVIDER_ROLES,
    BrainOptions,
    Role,
    StageKind,
    StageOptions,
    did_you_mean,
)
from tollbridge.vertical_prices import price_problems, vertical_catalog

SPEECH_LEAD_S = 1.0
"""Default speech lead. Measured by benchmarks/lead.py (10 concurrent barge-in calls on a shared
2-core machine, the TTS fake answering each sentence 300 ms late, as a provider's first audio
does): 1.0 s was the smallest lead no call starved at; 0.3, 0.5 and 0.8 s each left some calls
with stalls. A larger lead costs almost nothing: a barge-in cancels whole sentences, so 0.2 s to
1.5 s billed the same characters there."""
VERTICAL_FILE = "vertical.toml"
VERTICAL_GLOB = "*vertical.toml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_BUDGET_FAREWELL = (
    "I'm sorry, I have to end our call here. Thank you for calling, goodbye."
)
DEFAULT_APOLOGY = "Sorry, we're having technical trouble. Please call back in a few minutes."
DEFAULT_TRANSFER_MESSAGE = (
    "Sorry, we're having technical trouble. Let me put you through to a colleague."
)
_SECRET_OPTION = re.compile(r"(api_?key|auth_?token|secret|password)$", re.I)


class ConfigError(TollbridgeError):
    """One or more problems in config files, each already formatted with its location."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


_IMPOSSIBLE = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "no country has that calling code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
    phonenumbers.ValidationResult.INVALID_LENGTH: "a length no number of that country has",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "dialable only locally",
}


def e164(number: str) -> str:
    """`number` in E.164 (+15550100200), or a ValueError saying why it cannot be one.

    phonenumbers checks the calling code and the lengths that country's plan
    allows, not whether the number is assigned (the examples use fictional
    555-01xx numbers). Spaces, dashes and brackets are dropped.
    """
    if not number.strip().startswith("+"):
        raise ValueError(_not_e164(number))
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as error:
        why = str(error).split(") ", 1)[-1].rstrip(".")
        raise ValueError(_not_e164(number, why[:1].lower() + why[1:])) from None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason in _IMPOSSIBLE:
        raise ValueError(_not_e164(number, _IMPOSSIBLE[reason]))
    if parsed.extension:
        raise ValueError(_not_e164(number, "an extension cannot be dialled"))
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _not_e164(number: str, why: str = "") -> str:
    return f'"{number}" is not an E.164 phone number (like +15550100200)' + (
        f": {why}" if why else "")


PhoneNumber = Annotated[str, AfterValidator(e164)]


class Telephony(BaseModel):
    model_config = ConfigDict(extra="forbid")

    direction: Literal["inbound", "outbound"] = "inbound"
    number_type: Literal["local", "toll_free"] = "local"
    recording: bool = False
    monthly_minutes_per_number: int = Field(1000, gt=0)
    caller_id: PhoneNumber | None = None
    """The number outbound calls come from (defaults to the first of `numbers`)."""
    voicemail: str | None = Field(None, min_length=1)
    """Outbound only: the message left when an answering machine picks up. Setting it asks
    Twilio to detect machines on every call (waiting for the greeting to end; priced per
    call), so a machine costs the minutes and the message, never the AI stages."""


class OnFailure(BaseModel):
    """What the caller hears when a provider fails mid-call and its stage has no fallback
    left: the apology, then a hang-up, or with `transfer_to` the transfer message, then
    the call is put through to that number."""

    model_config = ConfigDict(extra="forbid")

    apology: str = Field(DEFAULT_APOLOGY, min_length=1)
    transfer_to: PhoneNumber | None = None
    """A human to take the call over (E.164), through Twilio's REST API."""
    transfer_message: str = Field(DEFAULT_TRANSFER_MESSAGE, min_length=1)

    @property
    def phrase(self) -> str:
        """What is said before the call ends or moves on."""
        return self.transfer_message if self.transfer_to else self.apology


class PriceOverride(BaseModel):
    """A negotiated rate replacing (or adding) one price-catalog row for this vertical."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    item: str
    model: str = ""
    usd: Decimal = Field(ge=0)
    unit: str | None = None
    """Needed only for a row the catalog lacks (a plugin's provider); else inherited."""
    granularity: str | None = None
    source: str = "negotiated rate"
    date: dt.date = Field(default_factory=dt.date.today)


@dataclass(frozen=True)
class Stage:
    """One validated chain entry: its kind, its typed options, and what takes over if it fails."""

    index: int
    kind: StageKind
    options: StageOptions
    fallback: Stage | None = None

    @property
    def name(self) -> str:
        return self.kind.name

    def with_fallbacks(self) -> Iterator[tuple[str, Stage]]:
        """This stage, then its fallback (and theirs), each with its key path in the file."""
        where, current = f"chain[{self.index}]", self
        while True:
            yield where, current
            if current.fallback is None:
                return
            where, current = f"{where}.fallback", current.fallback


class VerticalFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    tenant: str = Field(min_length=1)
    numbers: list[PhoneNumber] = Field(default_factory=list)
    description: str = ""
    greeting: str | None = None
    budget_usd: Decimal | None = Field(None, gt=0)
    budget_farewell: str = DEFAULT_BUDGET_FAREWELL
    phrase_cache: bool = True
    """Synthesize the greeting and farewell once per process and replay them."""
    speech_lead_s: float = Field(SPEECH_LEAD_S, ge=0, le=30)
    """How far ahead of what the caller hears text is sent to the TTS (0: all at once)."""
    telephony: Telephony = Field(default_factory=lambda: Telephony())
    on_failure: OnFailure = Field(default_factory=lambda: OnFailure())
    """A provider failing mid-call with no fallback left: apologize, then hang up or transfer."""
    prices: list[PriceOverride] = Field(default_factory=list)
    chain: list[dict[str, Any]] = Field(min_length=1)
    agents: dict[str, AgentFile] = Field(default_factory=dict)
    """Several agents on one line: the first answers (see `tollbridge.agents`)."""


@dataclass(frozen=True)
class Vertical:
    """A validated vertical: who it is, how it is reached, and its chain."""

    path: Path
    name: str
    tenant: str
    numbers: list[str]
    telephony: Telephony
    chain: list[Stage]
    description: str = ""
    greeting: str | None = None
    budget_usd: Decimal | None = None
    budget_farewell: str = ""
    phrase_cache: bool = True
    speech_lead_s: float = SPEECH_LEAD_S
    prices: list[PriceOverride] = field(default_factory=list)
    on_failure: OnFailure = field(default_factory=OnFailure)
    agents: tuple[Agent, ...] = ()
    """The agents sharing the line, the one that answers first; empty for a single agent."""

    @property
    def fixed_phrases(self) -> list[str]:
        """What the agent says word for word on many calls: the TTS phrase cache's candidates."""
        phrases = (self.greeting, self.budget_farewell, self.on_failure.phrase)
        return [text for text in phrases if text]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def stage(self, role: Role) -> Stage | None:
        return next((s for s in self.chain if s.kind.role is role), None)

    def required_env(self) -> dict[str, str]:
        """Environment variable → the stage needing it (for key checks)."""
        needed: dict[str, str] = {}
        for stage in self.chain:
            where = f"chain[{stage.index}]"
            current: Stage | None = stage
            while current is not None:
                name = current.kind.api_key_env(current.options)
                if name:
                    needed.setdefault(name, where)
                where, current = f"{where}.fallback", current.fallback
        return needed


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


TOP_LEVEL = "(top level)"
"""The key path of a problem with a whole table rather than one of its keys."""


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or TOP_LEVEL


def _messages(
    error: ValidationError, model: type[BaseModel] | None = None
) -> list[tuple[str, str]]:
    """(key path, message) pairs from a pydantic error, in the file's terms."""
    found = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown option"
            if model is not None and len(loc) == 1:
                known = list(model.model_fields)
                message += did_you_mean(str(loc[0]), known) or (
                    f" (options: {', '.join(known)})" if known else " (it takes no options)"
                )
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"].endswith("_type") or item["type"].endswith("_parsing"):
            message = f"{message} (got {item['input']!r})"
        found.append((_key_path(loc), message))
    return found


def _substitute_env(
    value: Any, env: Mapping[str, str], missing: list[tuple[str, str]], where: tuple[Any, ...] = ()
) -> Any:
    """Replace ${NAME} in strings; names not set are collected with their key path."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in env:
                return env[name]
            missing.append((_key_path(where), name))
            return match.group(0)

        return _ENV_REF.sub(lookup, value)
    if isinstance(value, list):
        return [_substitute_env(v, env, missing, (*where, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute_env(v, env, missing, (*where, k)) for k, v in value.items()}
    return value


def check_chain(stages: list[Stage]) -> list[tuple[str, str]]:
    """Reject chains that cannot work, before anything starts.

    The rules are about roles: one transport, first; one brain (stt → llm →
    tts in that order, or a speech-to-speech stage alone); at most one meter.
    Processor stages may stand anywhere after the transport.
    """
    problems: list[tuple[str, str]] = []
    transports = [s for s in stages if s.kind.role is Role.TRANSPORT]
    if not transports:
        problems.append(("chain", "no transport stage; the first stage must be one (e.g. \"twilio\")"))
    elif len(transports) > 1:
        problems.append((f"chain[{transports[1].index}].use", "a chain has exactly one transport"))
    elif stages[0].kind.role is not Role.TRANSPORT:
        problems.append((f"chain[{transports[0].index}].use", "the transport must be the first stage"))

    def one(role: Role) -> Stage | None:
        found = [s for s in stages if s.kind.role is role]
        for extra in found[1:]:
            problems.append((f"chain[{extra.index}].use", f"a chain has at most one {role} stage"))
        return found[0] if found else None

    stt, llm, tts, s2s = (one(r) for r in (Role.STT, Role.LLM, Role.TTS, Role.SPEECH_TO_SPEECH))
    one(Role.METER)
    if s2s:
        for other in (stt, llm, tts):
            if other:
                problems.append(
                    (
                        f"chain[{other.index}].use",
                        f"{s2s.name} is a speech-to-speech brain; a chain with it has no "
                        f"separate {other.kind.role} stage",
                    )
                )
        return problems
    for role, stage in (("stt", stt), ("llm", llm), ("tts", tts)):
        if stage is None:
            problems.append(("chain", f"no {role} stage; a cascaded chain needs stt → llm → tts"))
    ordered = [s for s in (stt, llm, tts) if s]
    for before, after in itertools.pairwise(ordered):
        if before.index > after.index:
            problems.append(
                (
                    f"chain[{after.index}].use",
                    f"{after.name} ({after.kind.role}) cannot come before "
                    f"{before.name} ({before.kind.role}); the order is stt → llm → tts",
                )
            )
    return problems


def _kind(use: str, registry: Registry, base_dir: Path) -> StageKind:
    """The registered kind `use` names, or the kind made for a ``module:Class`` processor."""
    if ":" in use:  # package.module:ClassName
        from tollbridge.plain_processor import processor_kind  # pipecat loads only when needed

        return processor_kind(use, base_dir)
    kind = registry.get(use)
    if kind is None:
        names = registry.names()
        raise ValueError(
            f'unknown stage kind "{use}"{did_you_mean(use, names)} (registered kinds: '
            f'{", ".join(names)}; or name a pipecat processor as "package.module:ClassName")'
        )
    return kind


def _build_stage(
    index: int, raw: dict[str, Any], registry: Registry, base_dir: Path, where: str = ""
) -> tuple[Stage | None, list[tuple[str, str]]]:
    where = where or f"chain[{index}]"
    if not isinstance(raw, dict):
        return None, [(where, "each stage is a table with a `use` key")]
    use = raw.get("use")
    if not isinstance(use, str):
        return None, [(f"{where}.use", "required: the registered kind of this stage")]
    try:
        kind = _kind(use, registry, base_dir)
    except ValueError as error:
        return None, [(f"{where}.use", str(error))]
    options = {k: v for k, v in raw.items() if k not in ("use", "fallback")}
    secrets = [
        (f"{where}.{key}", "secrets are never written in the file; set api_key_env to the "
         "name of the environment variable that holds it")
        for key, value in options.items()
        if _SECRET_OPTION.search(key) and isinstance(value, str) and not _ENV_REF.fullmatch(value)
    ]
    if secrets:
        return None, secrets
    try:
        parsed = kind.options.model_validate(options, context={"base_dir": base_dir, "kind": use})
    except ValidationError as error:
        return None, [
            (where if key == TOP_LEVEL else f"{where}.{key}", message)  # the stage as a whole
            for key, message in _messages(error, kind.options)
        ]
    if "fallback" not in raw:
        return Stage(index=index, kind=kind, options=parsed), []
    if kind.role not in PROVIDER_ROLES:
        return None, [(f"{where}.fallback", f"only provider stages have fallbacks, not a {kind.role}")]
    fallback, problems = _build_stage(index, raw["fallback"], registry, base_dir, f"{where}.fallback")
    if fallback is None:
        return None, problems
    if fallback.kind.role is not kind.role:
        return None, [(f"{where}.fallback.use", f"a {kind.role} stage's fallback must be "
                       f"another {kind.role} stage, not {fallback.name}")]
    if kind.role in BRAIN_ROLES:  # the same agent on another provider
        assert isinstance(parsed, BrainOptions) and isinstance(fallback.options, BrainOptions)
        inherited = {k: getattr(parsed, k) for k in ("prompt", "tools")
                     if getattr(fallback.options, k) is None}
        fallback = Stage(index, fallback.kind, fallback.options.model_copy(update=inherited))
    for side in ("audio_in", "audio_out"):
        mine = getattr(kind, side)(parsed)
        theirs = getattr(fallback.kind, side)(fallback.options)
        if mine != theirs:
            return None, [(f"{where}.fallback", f"{side.replace('_', ' ')} is {theirs}, "
                           f"but {use} has {mine}; a fallback must use the same audio format")]
    return Stage(index, kind, kind.with_fallback(parsed), fallback), []


def load_vertical(
    path: str | Path,
    *,
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
    check_keys: bool = False,
    catalog: Catalog | None = None,
) -> Vertical:
    """Load and validate one vertical (a TOML file, or a folder holding vertical.toml).

    Every billed stage must have a price in `catalog` (default: the packaged one)
    with the vertical's `[[prices]]` laid over it, or its calls could not be priced.
    """
    registry = registry or default_registry()
    env = os.environ if env is None else env
    path = Path(path)
    if path.is_dir():
        path = path / VERTICAL_FILE
    shown = _display(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{shown}: file not found"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{shown}: TOML syntax error: {error}"]) from None

    missing_env: list[tuple[str, str]] = []
    data = _substitute_env(data, env, missing_env)
    if missing_env:
        raise ConfigError(
            [f"{shown}: {key}: environment variable {name} is not set" for key, name in missing_env]
        )
    problems: list[tuple[str, str]] = []
    try:
        top = VerticalFile.model_validate(data)
    except ValidationError as error:
        raise ConfigError([f"{shown}: {key}: {msg}" for key, msg in _messages(error)]) from None

    stages: list[Stage] = []
    for index, raw in enumerate(top.chain):
        stage, stage_problems = _build_stage(index, raw, registry, path.parent)
        problems += stage_problems
        if stage:
            stages.append(stage)
    if not problems:
        problems += check_chain(stages)
    agents: list[Agent] = []
    if not problems:
        agents, agent_problems = load_agents(top.agents, stages, path.parent)
        problems += agent_problems
    if not problems:
        problems += _price_problems(stages, agents, top, catalog)
    if top.telephony.direction == "outbound" and not (top.telephony.caller_id or top.numbers):
        problems.append(("numbers", "an outbound vertical needs a number to call from"))
    if top.telephony.direction == "inbound" and top.telephony.voicemail:
        problems.append(("telephony.voicemail", "only outbound calls detect answering machines "
                         "(direction is inbound)"))

    vertical = Vertical(
        path=path,
        name=top.name,
        tenant=top.tenant,
        numbers=top.numbers,
        telephony=top.telephony,
        chain=stages,
        description=top.description,
        greeting=top.greeting,
        budget_usd=top.budget_usd,
        budget_farewell=top.budget_farewell,
        phrase_cache=top.phrase_cache,
        speech_lead_s=top.speech_lead_s,
        prices=top.prices,
        on_failure=top.on_failure,
        agents=tuple(agents),
    )
    if check_keys and not problems:
        for name, where in vertical.required_env().items():
            if not env.get(name):
                problems.append((f"{where}.api_key_env", f"environment variable {name} is not set"))
    if problems:
        raise ConfigError([f"{shown}: {key}: {msg}" for key, msg in problems])
    return vertical


def _price_problems(
    stages: list[Stage], agents: list[Agent], top: VerticalFile, catalog: Catalog | None
) -> list[tuple[str, str]]:
    try:
        priced = vertical_catalog(catalog or Catalog.load(), top.prices)
    except CatalogError as error:
        return [("prices", str(error))]
    return price_problems(stages, top.telephony, priced, dt.datetime.now(dt.UTC), agents)


def find_vertical_files(path: str | Path) -> list[Path]:
    """A vertical file, or every `vertical.toml` / `*.vertical.toml` under a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / VERTICAL_FILE).is_file():
        return sorted(path.glob(VERTICAL_GLOB))
    return sorted(path.rglob(VERTICAL_GLOB))


def load_verticals(
    path: str | Path,
    *,
    registry: Registry | None = None,
    check_keys: bool = False,
    catalog: Catalog | None = None,
) -> list[Vertical]:
    """Load every vertical under `path`, reporting every file's problems together."""
    files = find_vertical_files(path)
    if not files:
        raise ConfigError([f"{_display(Path(path))}: no vertical.toml found"])
    catalog = catalog or Catalog.load()
    verticals, problems = [], []
    for file in files:
        try:
            verticals.append(
                load_vertical(file, registry=registry, check_keys=check_keys, catalog=catalog)
            )
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError(problems)
    return verticals

"""The bridge: the FastAPI app Twilio talks to.

* ``POST /voice`` — the number's voice webhook: answers TwiML that connects a
  bidirectional Media Stream to ``/media`` with the vertical and tenant as
  ``<Parameter>``s (unknown number: a short apology and a hang-up);
* ``WS /media`` — the Media Streams socket, one call each;
* ``POST /status`` — call status callbacks (CallStatus, CallDuration…), kept
  so the ledger can reconcile telephony minutes to Twilio's figures; a value
  that makes no sense is refused with 400 before anything is written;
* ``POST /recording-status`` — recording status callbacks: a vertical that
  records starts `<Start><Recording>` ahead of the stream, and the recording
  is billed from the RecordingDuration reported here, only once it exists;
* ``POST /stream-status`` — stream status callbacks, logged;
* ``POST /calls`` — place an outbound call (``Authorization: Bearer``, checked
  before the body is read).

Every Twilio request is checked against ``X-Twilio-Signature`` unless the
documented development setting turns the check off. Each route is a small
function; the bridge, the signature check and the bearer token are
dependencies it declares.

While the server drains (shutting down), the voice webhook asks callers to
call back instead of connecting a stream here, new Media Streams are refused
and ``/healthz`` answers 503. A call SID has at most one live stream: a second
is refused before any pipeline starts, so it can neither replace the first
in ``sessions`` nor overwrite its ledger record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import uvicorn
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Request,
    WebSocket,
    WebSocketException,
    status,
)
from fastapi.datastructures import FormData
from fastapi.exceptions import RequestValidationError
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from twilio.twiml.voice_response import Connect, Start, VoiceResponse

from tollbridge import telemetry
from tollbridge.builder import render_phrases
from tollbridge.config import Vertical, e164
from tollbridge.costs.usage import CallUsage
from tollbridge.errors import TollbridgeError
from tollbridge.logs import get_logger
from tollbridge.metrics import CallMetrics
from tollbridge.session import CallSession, Pricer
from tollbridge.stage import CallContext
from tollbridge.transports.twilio import protocol
from tollbridge.transports.twilio.media_stream import serve_media_stream
from tollbridge.transports.twilio.signature import SignatureChecker, public_url
from tollbridge.transports.twilio.transport import MediaStreamConnection

log = get_logger(component="bridge")

MEDIA_PATH = "/media"
STATUS_PATH = "/status"
STREAM_STATUS_PATH = "/stream-status"
RECORDING_STATUS_PATH = "/recording-status"
ANSWERED_PATH = "/answered"
"""Where Twilio asks what to do with an outbound call once it knows who (or what) answered."""
HUMAN_ANSWERS = frozenset({"human", "unknown", ""})
"""Detection verdicts the agent takes (an unsure one too: a person hung up on is worse)."""
UNKNOWN_NUMBER_MESSAGE = "Sorry, this number is not in service. Goodbye."
UNAVAILABLE_MESSAGE = "Sorry, we cannot take your call right now. Please call back in a minute."
SHUTDOWN_FAREWELL = "Sorry, we have to end this call now. Please call back. Goodbye."
TRY_AGAIN_LATER = 1013
"""WebSocket close code for a stream that comes while the server drains."""

CALL_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress", "completed",
                           "busy", "no-answer", "failed", "canceled"})
RECORDING_STATUSES = frozenset({"in-progress", "paused", "stopped", "processing",
                                "completed", "absent", "failed"})
MAX_CALL_SECONDS = 24 * 3600
"""Twilio ends every call within 24 hours: a longer duration is not Twilio's."""
_SID = re.compile(r"^[A-Za-z]{2}[A-Za-z0-9]{1,62}$")
_SECONDS = re.compile(r"^[0-9]{1,6}$")
_Parsed = TypeVar("_Parsed")


class CallbackError(ValueError):
    """A Twilio callback whose values make no sense; the text names the field."""


def _sid_field(form: FormData, name: str) -> str:
    value = str(form.get(name) or "")
    if not value:
        raise CallbackError(f"{name} is missing")
    if not _SID.match(value):
        raise CallbackError(f"{name} {value[:80]!r} is not a Twilio SID")
    return value


def _status_field(form: FormData, name: str, known: frozenset[str]) -> str:
    value = str(form.get(name) or "")
    if value not in known:
        raise CallbackError(f"{name} {value[:80]!r} is not one of {', '.join(sorted(known))}")
    return value


def _seconds_field(form: FormData, name: str) -> int | None:
    """A duration in whole seconds, 0 to 24 hours; None when Twilio sent none."""
    value = str(form.get(name) or "")
    if not value:
        return None
    if not _SECONDS.match(value) or int(value) > MAX_CALL_SECONDS:
        raise CallbackError(
            f"{name} {value[:80]!r} is not a whole number of seconds from 0 to {MAX_CALL_SECONDS}"
        )
    return int(value)


@dataclass
class StatusUpdate:
    """A call status callback, as the ledger needs it."""

    call_sid: str
    status: str
    duration_seconds: int | None
    fields: dict[str, str]

    @classmethod
    def from_form(cls, form: FormData) -> StatusUpdate:
        """The callback's values, or a `CallbackError` naming the first that makes no sense."""
        return cls(
            call_sid=_sid_field(form, "CallSid"),
            status=_status_field(form, "CallStatus", CALL_STATUSES),
            duration_seconds=_seconds_field(form, "CallDuration"),
            fields={k: str(v) for k, v in form.items()},
        )


@dataclass
class RecordingUpdate:
    """A recording status callback: how much of a call Twilio recorded."""

    call_sid: str
    recording_sid: str
    status: str
    duration_seconds: int | None

    @classmethod
    def from_form(cls, form: FormData) -> RecordingUpdate:
        update = cls(
            call_sid=_sid_field(form, "CallSid"),
            recording_sid=_sid_field(form, "RecordingSid"),
            status=_status_field(form, "RecordingStatus", RECORDING_STATUSES),
            duration_seconds=None,
        )
        if update.status == "completed":
            update.duration_seconds = _seconds_field(form, "RecordingDuration")
            if update.duration_seconds is None:
                raise CallbackError("RecordingDuration is missing from a completed recording")
        return update


@dataclass
class BridgeSettings:
    public_url: str = "http://127.0.0.1:8084"
    """Base URL Twilio uses to reach the bridge (signatures are computed on it)."""
    auth_token: str = field(default="", repr=False)
    validate_signatures: bool = True
    """Only for local development: false accepts unsigned requests."""
    api_token: str = field(default="", repr=False)
    """Bearer token for POST /calls; empty disables the endpoint."""
    base_urls: Mapping[str, str] = field(default_factory=dict)
    """Stage kind → base URL overriding the configs (offline calls, tests)."""
    env: Mapping[str, str] | None = None
    """Where API keys are read from; the process environment when None."""
    user_speech_timeout: float = 0.6
    idle_timeout_s: float | None = 30.0
    """A stream with no media for this long ends (`idle`); None never ends one for that."""


class Bridge:
    """The verticals this server answers for, and what happens to their calls."""

    def __init__(
        self,
        verticals: list[Vertical],
        settings: BridgeSettings,
        *,
        on_finished: Callable[[Any], Awaitable[object]] | None = None,
        on_status: Callable[[StatusUpdate], Awaitable[None]] | None = None,
        on_recording: Callable[[RecordingUpdate], Awaitable[None]] | None = None,
        on_session: Callable[[CallSession], Awaitable[None]] | None = None,
        pricer: Pricer | None = None,
        dialer: Any = None,
    ):
        self.settings = settings
        self.verticals = {v.name: v for v in verticals}
        self.by_number: dict[str, Vertical] = {}
        for vertical in verticals:
            for number in vertical.numbers:
                self.by_number.setdefault(number, vertical)
        if settings.validate_signatures and not settings.auth_token:
            raise ValueError(
                "TWILIO_AUTH_TOKEN is not set; it is needed to check Twilio signatures "
                "(or turn the check off for local development only)"
            )
        self.signatures = SignatureChecker(settings.auth_token) if settings.auth_token else None
        telemetry.configure()  # from the OTEL_* variables, once per process; off by default
        self.on_finished = self._counted(on_finished)
        self.metrics = CallMetrics(active_calls=lambda: len(self.sessions))
        self.on_status = on_status
        self.on_recording = on_recording
        self.on_session = on_session
        self.pricer = pricer
        """Prices a call's usage so far, for per-call budgets."""
        self.dialer = dialer
        """Twilio's REST API: places outbound calls, redirects live ones a provider failed."""
        self.sessions: dict[str, CallSession] = {}
        """Live calls by call SID: one each, however many streams claim it."""
        self.draining = False
        """Shutting down: the webhook turns callers away and new sockets are refused."""
        self.closing = False
        """Past the drain's grace: even a socket opened before it may not start a call."""
        self._live: set[str] = set()
        self._streams = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    def _counted(
        self, on_finished: Callable[[Any], Awaitable[object]] | None
    ) -> Callable[[Any], Awaitable[object]]:
        """`on_finished`, then the call counted in the metrics (never at the record's cost)."""

        async def finished(usage: Any) -> object:
            try:
                return await on_finished(usage) if on_finished else None
            finally:
                if self.pricer is not None:
                    try:
                        cost = self.pricer(usage)
                        self.metrics.call_priced(cost)
                        if (watching := telemetry.active()) is not None:
                            watching.call_priced(cost)
                    except Exception as error:  # a metric is not worth a call's record
                        log.warning("call_not_counted", call_sid=usage.call_sid,
                                    error=repr(error))

        return finished

    @property
    def media_url(self) -> str:
        return public_url(self.settings.public_url, MEDIA_PATH, websocket=True)

    def answered_url(self, vertical: Vertical) -> str:
        return public_url(self.settings.public_url, ANSWERED_PATH, f"vertical={vertical.name}")

    def stream_twiml(
        self, vertical: Vertical, caller: str, callee: str, answered_by: str = ""
    ) -> str:
        """TwiML connecting the call to our Media Streams socket, recording it first if
        the vertical asks (`<Start>` goes on at once; `<Connect>` cannot record)."""
        response = VoiceResponse()
        if vertical.telephony.recording:
            start = Start()
            start.recording(
                recording_status_callback=public_url(
                    self.settings.public_url, RECORDING_STATUS_PATH
                ),
                recording_status_callback_method="POST",
                recording_status_callback_event="completed absent",
            )
            response.append(start)
        connect = Connect()
        stream = connect.stream(
            url=self.media_url,
            status_callback=public_url(self.settings.public_url, STREAM_STATUS_PATH),
        )
        for name, value in (
            ("vertical", vertical.name),
            ("tenant", vertical.tenant),
            ("from", caller),
            ("to", callee),
            *((("answered_by", answered_by),) if answered_by else ()),
        ):
            stream.parameter(name=name, value=value)
        response.append(connect)
        return str(response)

    def find_vertical(self, start: protocol.Start) -> Vertical | None:
        """The vertical a stream belongs to: named by its `vertical` parameter, else
        found by its `to` number, else the only one this bridge serves."""
        params = start.custom_parameters
        if "vertical" in params:
            return self.verticals.get(params["vertical"])
        if params.get("to") in self.by_number:
            return self.by_number[params["to"]]
        if len(self.verticals) == 1:
            return next(iter(self.verticals.values()))
        return None

    def make_call(
        self, vertical: Vertical, start: protocol.Start, connection: MediaStreamConnection
    ) -> CallContext:
        params = start.custom_parameters
        return CallContext(
            vertical=vertical,
            call_sid=start.call_sid,
            stream_sid=start.stream_sid,
            caller=params.get("from", ""),
            callee=params.get("to", ""),
            connection=connection,
            base_urls=self.settings.base_urls,
            env=os.environ if self.settings.env is None else self.settings.env,
            user_speech_timeout=self.settings.user_speech_timeout,
            answered_by=params.get("answered_by", ""),
        )

    async def machine_answered(self, vertical: Vertical, form: FormData) -> str:
        """TwiML for an outbound call a machine answered: the vertical's voicemail once the
        greeting has ended, else (a fax, a machine still talking) a hang-up. Its record
        goes to the ledger now: minutes, detection and no AI; Twilio's status callback
        then bills its duration."""
        answered_by = str(form.get("AnsweredBy", ""))
        response = VoiceResponse()
        leave_message = answered_by.startswith("machine_end")
        if leave_message and vertical.telephony.voicemail:
            response.say(vertical.telephony.voicemail)
        response.hangup()
        now = datetime.now(UTC)
        usage = CallUsage(
            call_sid=str(form.get("CallSid", "")), tenant=vertical.tenant,
            vertical=vertical.name, direction=vertical.telephony.direction,
            number_type=vertical.telephony.number_type, from_number=str(form.get("From", "")),
            to_number=str(form.get("To", "")), started_at=now, ended_at=now,
            measured_seconds=Decimal(0), billed_seconds=None, recording=False,
            monthly_minutes_per_number=vertical.telephony.monthly_minutes_per_number,
            ended_by="voicemail" if leave_message else "machine", answered_by=answered_by,
        )
        log.info("machine_answered", call_sid=usage.call_sid, vertical=vertical.name,
                 answered_by=answered_by, voicemail=leave_message)
        await self.on_finished(usage)
        return str(response)

    async def prepare(self) -> None:
        """What start-up does before the first call, in the background: warm up the stages,
        then pre-render the apologies."""
        await self.warm_up()
        await self.render_phrases()

    async def warm_up(self) -> None:
        """Load what each stage's calls share (e.g. a local model) before the first call."""
        for vertical in self.verticals.values():
            for stage in vertical.chain:
                for _, each in stage.with_fallbacks():
                    try:
                        await each.kind.warm_up(each.options)
                    except Exception as error:  # the first call then pays for it, or fails
                        log.warning("stage_not_warmed_up", vertical=vertical.name,
                                    stage=each.name, error=repr(error))

    async def render_phrases(self) -> None:
        """Pre-render each vertical's failure apology into the phrase cache, so a call whose
        TTS dies can still play it. No call pays for it: the characters are logged."""
        for vertical in self.verticals.values():
            call = CallContext(
                vertical=vertical, call_sid="", base_urls=self.settings.base_urls,
                env=os.environ if self.settings.env is None else self.settings.env,
            )
            try:
                characters = await render_phrases(call, [vertical.on_failure.phrase])
            except Exception as error:  # the calls still run; a dead TTS then means no apology
                log.warning("phrase_not_rendered", vertical=vertical.name, error=repr(error))
                continue
            if characters:
                log.info("phrases_rendered", vertical=vertical.name, characters=characters)

    def admission(self, call_sid: str) -> str | None:
        """Why a stream starting call `call_sid` may not run here now, or None."""
        if self.closing:
            return "the server is shutting down"
        if call_sid in self._live:
            return f"call {call_sid} already has a live stream here"
        return None

    async def serve(self, ws: WebSocket) -> None:
        """Run the call on an accepted Media Streams socket, listed in `sessions` while live."""
        claimed: list[str] = []

        def admit(start: protocol.Start) -> str | None:
            refused = self.admission(start.call_sid)
            if refused is None:
                self._live.add(start.call_sid)
                claimed.append(start.call_sid)
            return refused

        async def track(session: CallSession) -> None:
            self.sessions[session.call.call_sid] = session
            if self.on_session:
                await self.on_session(session)

        self._streams += 1
        self._quiet.clear()
        try:
            await serve_media_stream(
                ws,
                find_vertical=self.find_vertical,
                make_call=self.make_call,
                on_finished=self.on_finished,
                pricer=self.pricer,
                on_session=track,
                admit=admit,
                idle_timeout_s=self.settings.idle_timeout_s,
                control=self.dialer,
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # one broken call must never take the server down
            log.error("media_stream_failed", error=repr(error))
        finally:
            for call_sid in claimed:
                self._live.discard(call_sid)
                self.sessions.pop(call_sid, None)
            self._streams -= 1
            if not self._streams:
                self._quiet.set()

    @property
    def streams(self) -> int:
        """Media Streams sockets open now, calls started or not."""
        return self._streams

    async def until_quiet(self) -> None:
        """Wait until no Media Streams socket is open."""
        await self._quiet.wait()

    async def end_calls(self, farewell: str, reason: str) -> None:
        """Say `farewell` on every live call, let it play, then hang up; no call starts after."""
        self.closing = True
        await asyncio.gather(
            *(session.end(farewell=farewell, reason=reason) for session in self.sessions.values()),
            return_exceptions=True,
        )

    def hang_up_all(self, reason: str) -> None:
        """End every live call at once (records are still written); no call starts after."""
        self.closing = True
        for session in self.sessions.values():
            session.hang_up_now(reason)

    def signed(self, url: str, params: Any, signature: str | None) -> bool:
        if not self.settings.validate_signatures:
            return True
        assert self.signatures is not None
        return self.signatures.valid(url, params, signature)


class DialRequest(BaseModel):
    vertical: str
    to: str


def get_bridge(connection: HTTPConnection) -> Bridge:
    """The bridge the app serves (requests and sockets alike)."""
    return connection.app.state.bridge


BridgeDep = Annotated[Bridge, Depends(get_bridge)]


async def signed_form(request: Request, bridge: BridgeDep) -> FormData:
    """A Twilio webhook's form, once its X-Twilio-Signature proves Twilio sent it."""
    form = await request.form()
    url = public_url(bridge.settings.public_url, request.url.path, request.url.query)
    if not bridge.signed(url, form, request.headers.get("x-twilio-signature")):
        log.warning("bad_signature", path=request.url.path, call_sid=form.get("CallSid"))
        raise HTTPException(status_code=403, detail="invalid X-Twilio-Signature")
    return form


SignedForm = Annotated[FormData, Depends(signed_form)]


def signed_socket(ws: WebSocket, bridge: BridgeDep) -> None:
    """Refuse, before accepting it, a Media Streams socket Twilio did not sign."""
    if not bridge.signed(bridge.media_url, {}, ws.headers.get("x-twilio-signature")):
        log.warning("bad_signature", path=MEDIA_PATH)
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION)


def bearer_token(request: Request, bridge: BridgeDep) -> None:
    """Only callers holding the API token may place calls; without one configured, nobody."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    token = bridge.settings.api_token
    if scheme.lower() != "bearer" or not token or not hmac.compare_digest(
        given.encode(), token.encode()
    ):
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def dial_request(
    request: Request, _authorized: Annotated[None, Depends(bearer_token)]
) -> DialRequest:
    """The body of POST /calls, read only after the token: strangers learn nothing of it."""
    try:
        return DialRequest.model_validate_json(await request.body())
    except ValidationError as error:
        problems = error.errors(include_url=False)
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in problems]
        ) from None


def apology_twiml(message: str) -> str:
    """A short spoken apology and a hang-up: no stream, no call for the bridge."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


twilio_routes = APIRouter()
"""What Twilio calls: every request and socket is signed."""
api_routes = APIRouter()
"""What the operator calls: outbound dialing and health."""


@twilio_routes.post("/voice")
async def voice(form: SignedForm, bridge: BridgeDep) -> Response:
    callee, caller = str(form.get("To", "")), str(form.get("From", ""))
    vertical = bridge.by_number.get(callee)
    if vertical is None:
        log.warning("unknown_number", to=callee, call_sid=form.get("CallSid"))
        return Response(apology_twiml(UNKNOWN_NUMBER_MESSAGE), media_type="text/xml")
    if bridge.draining:
        log.warning("call_turned_away", call_sid=form.get("CallSid"), vertical=vertical.name,
                    reason="the server is shutting down")
        return Response(apology_twiml(UNAVAILABLE_MESSAGE), media_type="text/xml")
    log.info("incoming_call", call_sid=form.get("CallSid"), vertical=vertical.name)
    return Response(bridge.stream_twiml(vertical, caller, callee), media_type="text/xml")


@twilio_routes.post(ANSWERED_PATH)
async def answered(form: SignedForm, bridge: BridgeDep, vertical: str = "") -> Response:
    """An outbound call that asked for machine detection, now answered: the agent for a
    person, the voicemail (or a hang-up) for a machine."""
    found = bridge.verticals.get(vertical)
    if found is None:
        log.warning("unknown_vertical", vertical=vertical, call_sid=form.get("CallSid"))
        return Response(apology_twiml(UNAVAILABLE_MESSAGE), media_type="text/xml")
    answered_by = str(form.get("AnsweredBy", ""))
    if answered_by not in HUMAN_ANSWERS:
        return Response(await bridge.machine_answered(found, form), media_type="text/xml")
    twiml = bridge.stream_twiml(found, caller=str(form.get("From", "")),
                                callee=str(form.get("To", "")), answered_by=answered_by)
    return Response(twiml, media_type="text/xml")


@twilio_routes.post(STATUS_PATH)
async def call_status(form: SignedForm, bridge: BridgeDep) -> Response:
    update = _parsed(StatusUpdate.from_form, form)
    log.info("call_status", call_sid=update.call_sid, status=update.status,
             duration=update.duration_seconds)
    if bridge.on_status:
        await bridge.on_status(update)
    return Response(status_code=204)


@twilio_routes.post(RECORDING_STATUS_PATH)
async def recording_status(form: SignedForm, bridge: BridgeDep) -> Response:
    update = _parsed(RecordingUpdate.from_form, form)
    log.info("recording_status", call_sid=update.call_sid, recording_sid=update.recording_sid,
             status=update.status, duration=update.duration_seconds)
    if update.status in ("absent", "failed"):
        log.warning("recording_missing", call_sid=update.call_sid, status=update.status,
                    error_code=form.get("ErrorCode"))
    elif update.status == "completed" and bridge.on_recording:
        await bridge.on_recording(update)
    return Response(status_code=204)


def _parsed(parse: Callable[[FormData], _Parsed], form: FormData) -> _Parsed:
    """A callback's values, or a 400 naming what makes no sense (nothing is written)."""
    try:
        return parse(form)
    except CallbackError as error:
        log.warning("bad_callback", call_sid=str(form.get("CallSid", ""))[:80], detail=str(error))
        raise HTTPException(status_code=400, detail=str(error)) from None


@twilio_routes.post(STREAM_STATUS_PATH)
async def stream_status(form: SignedForm) -> Response:
    log.info("stream_status", call_sid=form.get("CallSid"), stream_event=form.get("StreamEvent"),
             error=form.get("StreamError"))
    return Response(status_code=204)


@twilio_routes.websocket(MEDIA_PATH, dependencies=[Depends(signed_socket)])
async def media(ws: WebSocket, bridge: BridgeDep) -> None:
    if bridge.draining:
        log.warning("stream_refused", reason="the server is shutting down")
        raise WebSocketException(code=TRY_AGAIN_LATER, reason="the server is shutting down")
    await ws.accept()
    await bridge.serve(ws)


@api_routes.post("/calls")
async def dial(
    body: Annotated[DialRequest, Depends(dial_request)], bridge: BridgeDep
) -> JSONResponse:
    vertical = bridge.verticals.get(body.vertical)
    if vertical is None:
        raise HTTPException(status_code=404, detail=f"unknown vertical {body.vertical!r}")
    try:
        to = e164(body.to)
    except ValueError as error:
        raise HTTPException(status_code=422, detail=f"to: {error}") from None
    if bridge.dialer is None:
        raise HTTPException(status_code=503, detail="outbound dialing is not configured")
    call_sid = await bridge.dialer.dial(bridge, vertical, to)
    return JSONResponse({"call_sid": call_sid}, status_code=201)


@api_routes.get("/metrics", dependencies=[Depends(bearer_token)])
async def metrics(bridge: BridgeDep) -> Response:
    """The bridge's calls in Prometheus' text format (see `tollbridge.metrics`)."""
    return Response(bridge.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@api_routes.get("/healthz")
async def healthz(bridge: BridgeDep) -> JSONResponse:
    """Live calls, and whether this bridge takes new ones (503 while it drains)."""
    body = {"ok": not bridge.draining, "draining": bridge.draining,
            "verticals": sorted(bridge.verticals), "calls": len(bridge.sessions)}
    return JSONResponse(body, status_code=503 if bridge.draining else 200)


def create_app(bridge: Bridge) -> FastAPI:
    """The bridge's routes; no schema or docs pages (nothing here is for browsing)."""
    app = FastAPI(title="tollbridge", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.bridge = bridge
    app.include_router(twilio_routes)
    app.include_router(api_routes)
    return app


GRACEFUL_STOP_S = 5
"""Once calls are over, how long uvicorn waits for the last connections to close."""


class ListenError(TollbridgeError):
    """The bridge could not listen where it was told (the port is taken, the host unknown)."""


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: what a signal means (a drain) is the service's.

    uvicorn ends the process when it cannot listen; here that is a `ListenError` instead,
    so the service still closes its ledger and says why in one line."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit as stopped:  # uvicorn logged the OSError it stopped on
            cause = stopped.__context__
            reason = getattr(cause, "strerror", None) or cause or "uvicorn could not start"
            raise ListenError(
                f"cannot listen on {self.config.host}:{self.config.port}: {reason}"
            ) from None


@contextlib.asynccontextmanager
async def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on this event loop; yields its http:// base URL."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, lifespan="off", ws_max_size=1 << 20,
        timeout_graceful_shutdown=GRACEFUL_STOP_S,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the reason it could not start
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        await task

"""Transports: how a call's audio reaches the pipeline (Twilio Media Streams)."""

from tollbridge.transports.twilio.transport import KIND as TWILIO

BUILTIN_KINDS = [TWILIO]

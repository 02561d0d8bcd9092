"""Transports: how a call's audio reaches the pipeline (Twilio Media Streams)."""

"""The ledger's schema, as numbered migrations applied in order when a ledger opens.

Each migration is a list of statements written once for both databases:
`{money}` becomes TEXT on SQLite (a Decimal's exact digits; SQLite's NUMERIC
would turn them into floats) and NUMERIC on PostgreSQL; `{timestamp}` becomes
TEXT (ISO 8601, UTC) or TIMESTAMPTZ. Never edit a released migration: add the
next number.

Numbers need not be contiguous: a ledger applies every known migration it
has not applied yet, in number order, so migrations developed side by side
must not depend on each other beyond migration 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at {timestamp} NOT NULL
)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "calls, line items and early callbacks",
        (
            """
            CREATE TABLE calls (
                call_sid TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                vertical TEXT NOT NULL,
                direction TEXT NOT NULL,
                number_type TEXT NOT NULL,
                from_number TEXT NOT NULL,
                to_number TEXT NOT NULL,
                started_at {timestamp} NOT NULL,
                ended_at {timestamp},
                measured_seconds {money} NOT NULL,
                billed_seconds INTEGER,
                total_usd {money} NOT NULL,
                usd_per_minute {money},
                catalog_version TEXT NOT NULL,
                ended_by TEXT NOT NULL,
                twilio_price_usd {money},
                drift_usd {money},
                status TEXT NOT NULL
            )
            """,
            "CREATE INDEX calls_tenant_started ON calls (tenant, started_at)",
            "CREATE INDEX calls_vertical_started ON calls (vertical, started_at)",
            """
            CREATE TABLE line_items (
                call_sid TEXT NOT NULL REFERENCES calls (call_sid) ON DELETE CASCADE,
                position INTEGER NOT NULL,
                item TEXT NOT NULL,
                provider TEXT NOT NULL,
                quantity {money} NOT NULL,
                unit TEXT NOT NULL,
                unit_price_usd {money} NOT NULL,
                usd {money} NOT NULL,
                PRIMARY KEY (call_sid, position)
            )
            """,
            # Twilio's status callback can beat the call's own record; it waits here.
            """
            CREATE TABLE pending_callbacks (
                call_sid TEXT PRIMARY KEY,
                billed_seconds INTEGER,
                status TEXT,
                twilio_price_usd {money},
                received_at {timestamp} NOT NULL
            )
            """,
        ),
    ),
    Migration(
        2,
        "unpriced line items and incomplete totals",
        (
            # why a line has no price ('' when priced); such a line is charged 0
            "ALTER TABLE line_items ADD COLUMN unpriced TEXT NOT NULL DEFAULT ''",
            # how many of the call's lines have no price: its total is incomplete when > 0
            "ALTER TABLE calls ADD COLUMN unpriced_items INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    Migration(
        4,
        "recorded seconds, and expiring callbacks for calls never seen",
        (
            # Twilio's RecordingDuration: the recording line bills it, not the call's length.
            "ALTER TABLE calls ADD COLUMN recorded_seconds INTEGER",
            "ALTER TABLE pending_callbacks ADD COLUMN recorded_seconds INTEGER",
            "CREATE INDEX pending_callbacks_received ON pending_callbacks (received_at)",
        ),
    ),
    Migration(
        5,
        "the provider whose failure ended a call",
        # e.g. 'deepgram.stt/nova-3'; '' when no provider failure ended the call
        ("ALTER TABLE calls ADD COLUMN failed_provider TEXT NOT NULL DEFAULT ''",),
    ),
    Migration(
        6,
        "agents: whose each LLM and TTS line is, the handoffs between them; machine detection",
        (
            # '' on a vertical with one agent
            "ALTER TABLE line_items ADD COLUMN agent TEXT NOT NULL DEFAULT ''",
            # Twilio's AnsweredBy (human, machine_end_beep, …); '' when detection was not asked
            "ALTER TABLE calls ADD COLUMN answered_by TEXT NOT NULL DEFAULT ''",
            """
            CREATE TABLE handoffs (
                call_sid TEXT NOT NULL REFERENCES calls (call_sid) ON DELETE CASCADE,
                position INTEGER NOT NULL,
                at_seconds {money} NOT NULL,
                from_agent TEXT NOT NULL,
                to_agent TEXT NOT NULL,
                PRIMARY KEY (call_sid, position)
            )
            """,
        ),
    ),
    Migration(
        7,
        "reports in SQL: daily totals kept as calls are stored; the turn timeline",
        (
            # `CallCost.unheard_speech_usd`, so a day's total of it can be kept
            "ALTER TABLE calls ADD COLUMN unheard_speech_usd {money} NOT NULL DEFAULT 0",
            "CREATE INDEX calls_started ON calls (started_at)",
            # Running totals per UTC day, tenant, vertical and outcome (and per line item),
            # in whole millionths of a dollar or second so SQL adds them exactly. The ledger
            # updates them in the transaction that stores a call, so a report of any size
            # reads a few thousand rows, not every call (`Ledger.rebuild_daily_totals`).
            """
            CREATE TABLE daily_calls (
                day TEXT NOT NULL,
                tenant TEXT NOT NULL,
                vertical TEXT NOT NULL,
                ended_by TEXT NOT NULL,
                calls INTEGER NOT NULL,
                seconds_micros BIGINT NOT NULL,
                usd_micros BIGINT NOT NULL,
                incomplete_calls INTEGER NOT NULL,
                unheard_usd_micros BIGINT NOT NULL,
                PRIMARY KEY (day, tenant, vertical, ended_by)
            )
            """,
            """
            CREATE TABLE daily_items (
                day TEXT NOT NULL,
                tenant TEXT NOT NULL,
                vertical TEXT NOT NULL,
                item TEXT NOT NULL,
                provider TEXT NOT NULL,
                unit TEXT NOT NULL,
                lines INTEGER NOT NULL,
                quantity_micros BIGINT NOT NULL,
                usd_micros BIGINT NOT NULL,
                PRIMARY KEY (day, tenant, vertical, item, provider, unit)
            )
            """,
            """
            CREATE TABLE turns (
                call_sid TEXT NOT NULL REFERENCES calls (call_sid) ON DELETE CASCADE,
                position INTEGER NOT NULL,
                at_seconds {money} NOT NULL,
                first_audio_ms INTEGER,
                stt_ms INTEGER,
                llm_ms INTEGER,
                tts_ms INTEGER,
                agent TEXT NOT NULL,
                PRIMARY KEY (call_sid, position)
            )
            """,
        ),
    ),
)

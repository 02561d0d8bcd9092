"""A cost dashboard on the ledger: served by `tollbridge serve` under /dashboard, or alone
by `tollbridge dashboard --ledger URL`; always behind the API token."""

from tollbridge.dashboard.app import Dashboard

__all__ = ["Dashboard"]

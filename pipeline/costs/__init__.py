"""Money: what every call costs, line by line.

`usage` (what a call consumed) → `pricing.price_call` with a `catalog.Catalog`
(dated prices; LLM tokens via genai-prices) → `lineitem.CallCost` → `ledger`
(SQLite or PostgreSQL, spooled when the database is down). `estimate` prices
an imagined call from a profile file; `cli.costs_app` puts it on the command line.
"""

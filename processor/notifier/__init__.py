"""`meter notifier`: tells people about their credits, by email and Standard Webhooks.

Layers, none of which imports Faust: `events` (which alert becomes which
notification, and who selected it), `store` (the durable outbox and the consumer's
positions, SQLite or PostgreSQL like the ledger sink), `channels` (SMTP and signed
webhooks), `settings_book` (every tenant's settings, read whole), `service` (the
consumer and the delivery loop), `server` (the process, with /metrics and /ready).
"""

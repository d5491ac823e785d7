"""Alembic's environment for the notifier's schema, run by `processor.notifier.store`.

As the ledger sink's, with its own version table, so the two may share one database.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=None, version_table="notifier_alembic_version"
)
with context.begin_transaction():
    context.run_migrations()

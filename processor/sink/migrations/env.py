"""Alembic's environment for the sink's schema, run by `processor.sink.store.migrate`.

The caller hands over an open (synchronous facade of an async) connection in
`config.attributes["connection"]`; there is no alembic.ini and no logging setup here.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()

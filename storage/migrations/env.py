"""Alembic environment: the engine is handed in by storage.db, never read from an ini file."""

from alembic import context

from storage.tables import Base

config = context.config
engine = config.attributes["engine"]

# Several daemons may start at once on one database: the first migrates, the others wait and find it done.
with engine.connect().execution_options(sqlite_immediate=True) as connection, connection.begin():
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7262577)")  # an arbitrary, fixed key
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()

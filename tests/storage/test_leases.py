"""One holder at a time; expiry hands the lease over."""

from datetime import datetime, timedelta, timezone

from storage.db import make_engine, session_scope, upgrade_database
from storage.leases import acquire_lease, release_lease

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_one_holder_until_expiry(db_url):
    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        with session_scope(engine) as s:
            assert acquire_lease(s, "report", 1, 60, T0)
        with session_scope(engine) as s:
            assert not acquire_lease(s, "report", 2, 60, T0 + timedelta(seconds=30))
            assert acquire_lease(s, "report", 1, 60, T0 + timedelta(seconds=30))  # renewal
            assert acquire_lease(s, "other", 2, 60, T0)  # leases are independent
        with session_scope(engine) as s:
            assert acquire_lease(s, "report", 2, 60, T0 + timedelta(seconds=91))  # expired: taken over
            release_lease(s, "report", 2)
        with session_scope(engine) as s:
            assert acquire_lease(s, "report", 3, 60, T0 + timedelta(seconds=92))
    finally:
        engine.dispose()

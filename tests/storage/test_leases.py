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


def test_a_dead_worker_on_this_host_gives_up_its_claims_at_once(db_url):
    """kill -9 then a restart on the same host: the dead worker's files are free now, not after the claim expiry;
    a live worker's claims, and workers on other hosts, are left alone."""
    from sqlalchemy import select

    from storage.leases import release_dead_workers
    from storage.tables import File, Worker

    engine = make_engine(db_url)
    try:
        upgrade_database(engine)
        far = datetime.now(timezone.utc) + timedelta(hours=1)
        with session_scope(engine) as s:
            workers = [Worker(host="here", pid=101), Worker(host="here", pid=102), Worker(host="there", pid=103),
                       Worker(host="here", pid=104)]
            s.add_all(workers)
            s.flush()
            for w in workers:
                s.add(File(folder="inbox", source_path=f"{w.pid}.jpg", original_name=f"{w.pid}.jpg", size=1,
                           mtime_ns=0, state="pending", location=f"inbox/{w.pid}.jpg", claimed_by=w.id,
                           claim_expires_at=far))
        with session_scope(engine) as s:
            # 101 is dead, 102 is alive, 103 is on another host, 104 is the worker asking.
            released = release_dead_workers(s, "here", me=4, alive=lambda w: w.pid == 102)
        assert released == 1
        with session_scope(engine) as s:
            claims = {f.source_path: f.claimed_by for f in s.scalars(select(File))}
            stopped = {w.pid: w.stopped_at is not None for w in s.scalars(select(Worker))}
        assert claims == {"101.jpg": None, "102.jpg": 2, "103.jpg": 3, "104.jpg": 4}
        assert stopped == {101: True, 102: False, 103: False, 104: False}
    finally:
        engine.dispose()

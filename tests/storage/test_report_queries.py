"""The report's aggregates are counted in the database, the same on SQLite and PostgreSQL."""

from datetime import datetime, timedelta, timezone

import pytest

from storage.db import make_engine, session_scope, upgrade_database
from storage.queries import confidence_histogram, files_by_hour, latest_predictions_stmt, newest_floor, \
    quarantined_stmt
from storage.tables import File, Prediction

T0 = datetime(2026, 11, 20, 9, 30, 12, 345678, tzinfo=timezone.utc)


@pytest.fixture
def engine(db_url):
    e = make_engine(db_url)
    upgrade_database(e)
    yield e
    e.dispose()


def _file(s, name, state="processed", folder="inbox", at=T0, **kw) -> File:
    f = File(folder=folder, source_path=name, original_name=name, size=1, state=state, processed_at=at, **kw)
    s.add(f)
    s.flush()
    return f


def test_the_confidence_histogram_counts_the_latest_prediction_of_each_file_per_bin(engine):
    with session_scope(engine) as s:
        for i, conf in enumerate([0.0, 0.05, 0.1, 0.399, 0.4, 0.95, 0.999, 1.0]):
            _predicted = _file(s, f"{i}.jpg")
            s.add(Prediction(file_id=_predicted.id, predicted_class="a", confidence=conf))
        again = _file(s, "again.jpg")
        s.add(Prediction(file_id=again.id, predicted_class="a", confidence=0.55))  # history: replaced below
        s.flush()
        s.add(Prediction(file_id=again.id, predicted_class="a", confidence=0.65))
        s.add(Prediction(file_id=_file(s, "none.jpg").id, predicted_class=None, confidence=None))
    with session_scope(engine) as s:
        assert confidence_histogram(s) == [2, 1, 0, 1, 1, 0, 1, 0, 0, 3]
        assert confidence_histogram(s, bins=2) == [5, 4]


def test_files_are_counted_per_hour_by_state_and_folder(engine):
    with session_scope(engine) as s:
        _file(s, "a.jpg")
        _file(s, "b.jpg", at=T0 + timedelta(minutes=20))
        _file(s, "c.jpg", folder="labeled", at=T0 + timedelta(hours=1))
        _file(s, "d.jpg", state="quarantined", at=None, updated_at=T0 + timedelta(days=1))  # decided, not moved
        _file(s, "e.jpg", state="pending", at=None)
    with session_scope(engine) as s:
        got = sorted(files_by_hour(s))
    hour = T0.replace(minute=0, second=0, microsecond=0)
    assert got == [(hour, "processed", "inbox", 2), (hour + timedelta(hours=1), "processed", "labeled", 1),
                   (hour + timedelta(days=1), "quarantined", "inbox", 1)]
    assert all(h.tzinfo is not None and h.utcoffset() == timedelta(0) for h, *_ in got)


def test_the_newest_floor_is_the_id_the_newest_n_rows_start_at(engine):
    with session_scope(engine) as s:
        ids = []
        for i in range(5):
            f = _file(s, f"{i}.jpg")
            p = Prediction(file_id=f.id, predicted_class="a", confidence=0.5)
            s.add(p)
            s.flush()
            ids.append(p.id)
        _file(s, "q1.jpg", state="quarantined")
    with engine.connect() as conn:
        assert newest_floor(conn, latest_predictions_stmt(), 2) == ids[3]
        assert newest_floor(conn, latest_predictions_stmt(), 50) == ids[0]
        assert newest_floor(conn, quarantined_stmt(), 1) is not None
        conn.rollback()
    with session_scope(engine) as s:
        s.query(Prediction).delete()
    with engine.connect() as conn:
        assert newest_floor(conn, latest_predictions_stmt(), 2) is None

"""The rows an inbox chunk stores (pipeline.inference.steps.store_results, through the tables' INSERTs): each
prediction on its own file and each box on its own image's prediction, on SQLite and PostgreSQL alike."""

from sqlalchemy import select

from pipeline.inference.steps import Result, store_results
from storage.db import session_scope
from storage.tables import Detection, File, Prediction


def _files(s, n: int) -> list[int]:
    rows = [File(folder="inbox", source_path=f"{i}.jpg", original_name=f"{i}.jpg", size=1, state="processed")
            for i in range(n)]
    s.add_all(rows)
    s.flush()
    return [r.id for r in rows]


def test_each_box_is_stored_on_the_prediction_of_its_own_image(engine):
    with session_scope(engine) as s:
        ids = _files(s, 3)
        # Box counts 2, 0, 3, told apart by their class names: a box on a neighbour's prediction shows.
        results = [(fid, Result(predicted_class=f"img{k}", confidence=0.5, width=10, height=20, model_version="v1",
                                detections=[(f"img{k}", 0.9, 0.1 * j, 0.1, 0.5, 0.6) for j in range(n)]))
                   for k, (fid, n) in enumerate(zip(ids, (2, 0, 3)))]
        store_results(s, results)
    with session_scope(engine) as s:
        preds = {p.file_id: p for p in s.scalars(select(Prediction))}
        assert [preds[fid].predicted_class for fid in ids] == ["img0", "img1", "img2"]
        assert all(preds[fid].created_at is not None and preds[fid].width == 10 for fid in ids)
        boxes = s.execute(select(Prediction.file_id, Detection.class_name, Detection.x1)
                          .join(Detection, Detection.prediction_id == Prediction.id)).all()
    by_file = {fid: sorted((c, round(x, 2)) for f, c, x in boxes if f == fid) for fid in ids}
    assert by_file == {ids[0]: [("img0", 0.0), ("img0", 0.1)], ids[1]: [],
                       ids[2]: [("img2", 0.0), ("img2", 0.1), ("img2", 0.2)]}


def test_a_classify_chunk_stores_its_predictions_without_boxes(engine):
    with session_scope(engine) as s:
        ids = _files(s, 2)
        store_results(s, [(fid, Result(predicted_class="comic", confidence=0.75, top5=[["comic", 0.75]]))
                          for fid in ids])
    with session_scope(engine) as s:
        got = s.execute(select(Prediction.file_id, Prediction.top5)).all()
        assert sorted(got) == [(ids[0], [["comic", 0.75]]), (ids[1], [["comic", 0.75]])]
        assert s.scalar(select(Detection.id)) is None

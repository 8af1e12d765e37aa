"""`coverwatch train` and `coverwatch models list|promote|rollback` through the real entry point."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from storage.db import session_scope
from storage.tables import ModelVersion, TrainingRun
from tests.conftest import run_cli


def cli(home, *args):
    return run_cli("-c", str(home / "coverwatch.yaml"), *args)


def test_train_queues_a_run_and_merges_a_second_request(home):
    first = cli(home, "train")
    assert (first.returncode, first.stdout.strip()) == (0, "training run 1 queued")
    again = cli(home, "train")
    assert again.stdout.strip() == "training run 1 was already queued; request merged"
    status = json.loads(cli(home, "status", "--json").stdout)
    assert status["training"] == {"state": "queued", "epoch": None, "epochs": None, "trigger": "manual",
                                  "version": None, "losses": None, "eta_seconds": None}


def test_train_wait_without_a_dataset_says_why_in_one_line(home):
    r = cli(home, "train", "--wait")
    assert r.returncode == 1  # the run failed (2 is for a bad config or arguments)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "coverwatch: error: training run 1 failed: cannot prepare the dataset: no dataset yet: drop labelled "
        "images into labeled/")


def seed_models(engine) -> None:
    t0 = datetime.now(timezone.utc) - timedelta(hours=3)
    with session_scope(engine) as s:
        s.add_all([
            ModelVersion(version="v0001", task="detect", path="models/v0001", state="retired", classes=["a"],
                         metrics={"map50_95": 0.31}, promoted_at=t0, decision="no comparable champion"),
            ModelVersion(version="v0002", task="detect", path="models/v0002", state="champion", classes=["a"],
                         metrics={"map50_95": 0.42}, promoted_at=t0 + timedelta(hours=1)),
            ModelVersion(version="v0003", task="detect", path="models/v0003", state="rejected", classes=["a"],
                         metrics={"map50_95": 0.40}, decision="rejected: map50_95 0.4000 vs champion 0.4200"),
        ])


def champion_of(engine) -> str:
    with session_scope(engine) as s:
        return s.scalar(select(ModelVersion.version).where(ModelVersion.state == "champion"))


def test_models_list_promote_and_rollback(home, engine):
    seed_models(engine)
    listed = cli(home, "models", "list").stdout.splitlines()
    assert [line.split()[:4] for line in listed] == [
        ["v0003", "rejected", "map50_95", "0.4000"], ["v0002", "champion", "map50_95", "0.4200"],
        ["v0001", "retired", "map50_95", "0.3100"]]

    assert cli(home, "models", "promote", "v0003").stdout.strip() == "v0003 is the champion"
    assert champion_of(engine) == "v0003"
    assert cli(home, "models", "rollback").stdout.strip() == "rolled back from v0003 to v0002; v0002 is the champion"
    assert champion_of(engine) == "v0002"
    rows = json.loads(cli(home, "models", "list", "--json").stdout)
    assert {r["version"]: r["state"] for r in rows} == {"v0003": "rolled_back", "v0002": "champion",
                                                        "v0001": "retired"}


def test_models_errors_are_one_line(home, engine):
    r = cli(home, "models", "rollback")
    assert (r.returncode, r.stderr.strip()) == (2, "coverwatch: error: there is no champion to roll back from")
    r = cli(home, "models", "promote", "v0042")
    assert r.returncode == 2
    assert r.stderr.strip() == "coverwatch: error: no model version 'v0042' (see `coverwatch models list`)"
    assert cli(home, "models", "list").stdout.strip() == "no trained models yet"


def test_train_wait_exits_1_when_the_run_fails_and_status_and_models_list_show_it(home):
    r = cli(home, "train", "--wait")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("coverwatch: error: training run 1 failed: ")
    last = json.loads(cli(home, "status", "--json").stdout)["last_training"]
    assert (last["run"], last["version"], last["state"]) == (1, "v0001", "failed")
    assert last["error"].startswith("cannot prepare the dataset: no dataset yet")
    plain = cli(home, "status").stdout.splitlines()
    assert [x for x in plain if x.startswith("last training: ")] == [
        f"last training: run 1 v0001 failed {local_minute(last['finished_at'])}: {last['error']}"]
    listed = cli(home, "models", "list").stdout.splitlines()
    assert len(listed) == 1 and listed[0].split()[:2] == ["v0001", "failed"]
    assert listed[0].endswith("cannot prepare the dataset: no dataset yet: drop labelled images into labeled/")
    rows = json.loads(cli(home, "models", "list", "--json").stdout)
    assert [(m["version"], m["state"], m["run"]) for m in rows] == [("v0001", "failed", 1)]


def local_minute(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def test_status_shows_a_run_that_failed_in_training(home, engine):
    done = datetime.now(timezone.utc)
    with session_scope(engine) as s:
        s.add(TrainingRun(state="failed", trigger="labels", version="v0001", finished_at=done,
                          error="TypeError: cross_entropy_loss(): argument 'input' must be Tensor, not dict"))
    plain = cli(home, "status").stdout.splitlines()
    assert f"last training: run 1 v0001 failed {done.astimezone():%Y-%m-%d %H:%M}: TypeError: cross_entropy_loss(): " \
           "argument 'input' must be Tensor, not dict" in plain
    assert "training: idle" in plain


def test_models_list_shows_per_class_figures_calibration_and_the_confusion_matrix(home, engine):
    from storage.tables import ModelMetric
    from storage.tables import ModelConfusion

    with session_scope(engine) as s:
        mv = ModelVersion(version="v0001", task="classify", path="models/v0001", state="champion",
                          classes=["만화", "동화"], metrics={"top1": 0.8}, promoted_at=datetime.now(timezone.utc),
                          temperature=1.734, ece_before=0.2104, ece_after=0.0412)
        s.add(mv)
        s.flush()
        s.add_all([ModelMetric(model_version_id=mv.id, class_name=None, top1=0.8, images=25),
                   ModelMetric(model_version_id=mv.id, class_name="만화", images=20, precision=0.85, recall=0.9),
                   ModelMetric(model_version_id=mv.id, class_name="동화", images=5, precision=0.5, recall=0.4),
                   ModelConfusion(model_version_id=mv.id, classes=["만화", "동화"], matrix=[[18, 2], [3, 2]])])
    listed = cli(home, "models", "list").stdout.splitlines()
    assert listed[0].split()[:4] == ["v0001", "champion", "top1", "0.8000"]
    assert listed[1:] == [
        "    calibration: temperature 1.73, expected calibration error 0.210 -> 0.041",
        "    class  images  precision  recall",
        "    만화         20       0.85    0.90",
        "    동화          5       0.50    0.40",
        "    confusion matrix, rows true, columns predicted (만화, 동화):",
        "    만화      18   2",
        "    동화       3   2"]
    (row,) = json.loads(cli(home, "models", "list", "--json").stdout)
    assert (row["temperature"], row["ece_before"], row["ece_after"]) == (1.734, 0.2104, 0.0412)
    assert row["per_class"] == [{"class_name": "만화", "images": 20, "precision": 0.85, "recall": 0.9},
                                {"class_name": "동화", "images": 5, "precision": 0.5, "recall": 0.4}]
    assert row["confusion"] == {"classes": ["만화", "동화"], "matrix": [[18, 2], [3, 2]]}


def test_models_promote_forces_a_candidate_the_gate_refused(home, engine):
    seed_models(engine)
    with session_scope(engine) as s:
        s.scalar(select(ModelVersion).where(ModelVersion.version == "v0003")).decision = (
            "rejected: a recall 0.61 -> 0.42 (-0.19, more than training.max_class_drop 0.05)")
    assert cli(home, "models", "promote", "v0003").stdout.strip() == "v0003 is the champion"
    rows = {r["version"]: r for r in json.loads(cli(home, "models", "list", "--json").stdout)}
    assert rows["v0003"]["state"] == "champion" and rows["v0002"]["state"] == "retired"
    assert rows["v0003"]["decision"] == ("rejected: a recall 0.61 -> 0.42 (-0.19, more than "
                                         "training.max_class_drop 0.05); promoted by hand")

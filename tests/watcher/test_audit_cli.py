"""`coverwatch audit` through the real entry point: bad input is one line, a queued audit shows in status."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def cli(home, *args):
    return run_cli("-c", str(home / "coverwatch.yaml"), *args)


def _classify(home):
    cfg = home / "coverwatch.yaml"
    cfg.write_text(cfg.read_text().replace("task: detect", "task: classify", 1))


def test_audit_without_labels_says_so_in_one_line(home):
    _classify(home)
    r = cli(home, "audit", "--wait")
    assert r.returncode == 2, r.stderr
    assert r.stderr == ("coverwatch: error: no labelled images to audit yet: drop labelled images into labeled/ "
                        "first\n")
    assert r.stdout == ""


def test_audit_of_a_detect_home_says_it_covers_classify_only(home):
    r = cli(home, "audit")
    assert r.returncode == 2
    assert r.stderr == ("coverwatch: error: the label audit covers task: classify only for now; this home is "
                        "task: detect\n")


def test_a_bad_folds_value_is_one_line(home):
    _classify(home)
    r = cli(home, "audit", "--folds", "1")
    assert r.returncode == 2 and "--folds" in r.stderr and "Traceback" not in r.stderr


def test_a_queued_audit_shows_in_status_beside_training(home, engine):
    from tests.pipeline.training_fakes import add_samples

    _classify(home)
    add_samples(engine, 3)
    r = cli(home, "audit", "--folds", "4")
    assert (r.returncode, r.stdout) == (0, "audit run 1 queued\n")
    assert cli(home, "train").stdout == "training run 2 queued\n"  # its own queue: not merged into the audit
    status = json.loads(cli(home, "status", "--json").stdout)
    assert status["audit"] == {"state": "queued", "fold": None, "folds": 4, "epoch": None, "epochs": None,
                               "version": None, "trigger": "manual"}
    assert status["training"]["state"] == "queued"
    assert "audit: queued fold 0/4 epoch 0/?" in cli(home, "status").stdout


def test_the_outcome_says_when_the_fold_models_are_too_weak_to_judge_labels():
    from watcher.cli.audit import _format_outcome

    found = {"folds": 2, "epochs": 3, "images": 56, "flagged": 0, "health_score": 0.4, "accuracy": 0.3,
             "majority_share": 0.4, "weak": True, "review_folder": None, "flagged_images": [], "pairs": [],
             "worst_classes": []}
    lines = _format_outcome("audit-0001", found).splitlines()
    assert lines[0] == ("audit-0001: 2 folds x 3 epochs, 56 labelled images; label health 0.40 (1.0: no likely "
                        "label errors); the fold models are right on 30% of the images they never saw")
    assert lines[1].startswith("warning: that is no better than always answering the largest class (40%)")
    assert _format_outcome("audit-0001", {**found, "weak": False}).splitlines()[1] == "no image looks mislabelled"

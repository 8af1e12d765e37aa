"""Config validation: every bad config gives one line naming the key path."""

import logging
from pathlib import Path

import pytest

from tests.conftest import copy_images
from tests.watcher.conftest import configure, final_rows, rows, running, wait_for
from watcher.config import load_config
from watcher.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "coverwatch.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_for_every_key(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.task == "detect"
    assert cfg.watch.settle_seconds == 1.0 and cfg.watch.rescan_seconds == 60 and cfg.watch.polling == "auto"
    assert cfg.watch.pair_timeout_seconds == 30
    assert cfg.watch.near_duplicate_bits == 6
    assert (cfg.model.weights, cfg.model.imgsz, cfg.model.backend, cfg.model.batch) == ("yolo11n.pt", 640, "auto", 16)
    assert (cfg.model.conf, cfg.model.review_below, cfg.model.device) == (0.25, 0.4, "auto")
    t = cfg.training
    assert (t.base, t.epochs, t.imgsz, t.batch, t.patience, t.min_new_labels, t.val_fraction, t.balance) == (
        "yolo11n.yaml", 100, 640, "auto", 20, 50, 0.2, "none")
    assert (t.max_repeat, t.conflicts, t.ambiguity_iou, t.imbalance_warn_ratio) == (4, "exclude", 0.7, 5.0)
    assert (t.promote_min_delta, t.max_class_drop, t.gate_min_images) == (0.0, 0.05, 10)
    assert cfg.reports.every_minutes == 60 and cfg.reports.thumbnails == 2000


def test_paths_resolve_against_the_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, "database: sqlite:///db/cw.db\npaths: {inbox: drops/in}\n"))
    assert cfg.path("inbox") == (tmp_path / "drops/in").resolve()
    assert cfg.database_url == f"sqlite:///{(tmp_path / 'db/cw.db').resolve()}"


def test_other_database_urls_are_kept(tmp_path):
    cfg = load_config(write(tmp_path, "database: postgresql+psycopg://u@h/db\n"))
    assert cfg.database_url == "postgresql+psycopg://u@h/db"


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    with pytest.raises(Exception):
        cfg.watch.settle_seconds = 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("watch: {settle_seconds: -1}", "watch.settle_seconds: input should be greater than or equal to 0 (got -1)"),
        ("watch: {rescan_seconds: 0}", "watch.rescan_seconds: input should be greater than 0 (got 0)"),
        ("watch: {rescan_seconds: -5}", "watch.rescan_seconds: input should be greater than 0 (got -5)"),
        ("watch: {polling: maybe}", "watch.polling: input should be 'auto', True or False (got 'maybe')"),
        ("watch: {colour: red}", "watch.colour: unknown key"),
        ("watch: {near_duplicate_bits: 12}",
         "watch.near_duplicate_bits: input should be less than or equal to 11 (got 12)"),
        ("watch: {near_duplicate_bits: -1}",
         "watch.near_duplicate_bits: input should be greater than or equal to 0 (got -1)"),
        ("watch: {near_duplicate_bits: 2.5}", "watch.near_duplicate_bits: input should be a valid integer (got 2.5)"),
        ("colour: red", "colour: unknown key"),
        ("task: segment", "task: input should be 'detect' or 'classify' (got 'segment')"),
        ("training: {batch: lots}", "training.batch: expected a positive integer or 'auto' (got 'lots')"),
        ("training: {batch: -2}", "training.batch: expected a positive integer or 'auto' (got -2)"),
        ("training: {epochs: ten}", "training.epochs: input should be a valid integer (got 'ten')"),
        ("training: {val_fraction: 1.5}", "training.val_fraction: input should be less than 1 (got 1.5)"),
        ("training: {at: '25:00'}", "training.at: expected a time of day as HH:MM (got '25:00')"),
        ("training: {balance: always}", "training.balance: input should be 'none' or 'oversample' (got 'always')"),
        ("training: {max_repeat: 0}", "training.max_repeat: input should be greater than 0 (got 0)"),
        ("training: {conflicts: first}", "training.conflicts: input should be 'exclude' or 'latest' (got 'first')"),
        ("training: {max_class_drop: 1.5}",
         "training.max_class_drop: input should be less than or equal to 1 (got 1.5)"),
        ("training: {max_class_drop: -0.1}",
         "training.max_class_drop: input should be greater than or equal to 0 (got -0.1)"),
        ("training: {gate_min_images: -1}",
         "training.gate_min_images: input should be greater than or equal to 0 (got -1)"),
        ("training: {gate_min_images: 2.5}", "training.gate_min_images: input should be a valid integer (got 2.5)"),
        ("training: {audit_folds: 1}", "training.audit_folds: expected 0 (no audit) or 2 and more folds (got 1)"),
        ("training: {audit_folds: -1}", "training.audit_folds: input should be greater than or equal to 0 (got -1)"),
        ("training: {audit_epochs: 0}", "training.audit_epochs: input should be greater than 0 (got 0)"),
        ("model: {conf: 2}", "model.conf: input should be less than or equal to 1 (got 2)"),
        ("model: {imgsz: big}", "model.imgsz: input should be a valid integer (got 'big')"),
        ("model: {backend: tensorrt}", "model.backend: input should be 'auto', 'torch' or 'onnx' (got 'tensorrt')"),
        ("reports: {every_minutes: -1}", "reports.every_minutes: input should be greater than 0 (got -1)"),
        ("reports: {thumbnails: -1}", "reports.thumbnails: input should be greater than or equal to 0 (got -1)"),
        ("reports: {thumbnails: many}", "reports.thumbnails: input should be a valid integer (got 'many')"),
        ("reports: {thumbnails: 2.5}", "reports.thumbnails: input should be a valid integer (got 2.5)"),
        ("watch: 5", "watch: input should be a valid dictionary or instance of WatchConfig (got 5)"),
        ("- a\n- b", "expected a mapping of keys at the top level, got list"),
        ("watch: {settle_seconds: [1", "YAML syntax error"),
        ("home: /etc", "home: unknown key"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_a_path_that_is_not_a_directory(tmp_path):
    (tmp_path / "inbox").write_text("I am a file")
    with pytest.raises(ConfigError, match=r"paths.inbox: .* exists and is not a directory"):
        load_config(write(tmp_path, ""))


@pytest.mark.parametrize(("given", "used"), [(640, 640), (100, 128), (641, 672), (32, 32)])
def test_image_size_rounds_up_to_the_stride_with_a_warning(tmp_path, caplog, given, used):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(write(tmp_path, f"model: {{imgsz: {given}}}\ntraining: {{imgsz: {given}}}"))
    assert cfg.model.imgsz == used and cfg.training.imgsz == used
    warned = [r.getMessage() for r in caplog.records if "multiple of 32" in r.getMessage()]
    assert len(warned) == (0 if given == used else 2)
    if warned:
        assert f"model.imgsz: {given} is not a multiple of 32 (the model's stride); using {used}" in warned


# Overlapping folders: `archive: inbox` once archived into the inbox forever (issue 14, item 7).

FOLDER_NAMES = ("inbox", "labeled", "archive", "quarantine", "review", "dataset", "models", "reports")
PAIRS = [(a, b) for i, a in enumerate(FOLDER_NAMES) for b in FOLDER_NAMES[i + 1:]]


def refused(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_two_keys_naming_one_folder_are_refused(tmp_path, first, second):
    msg = refused(tmp_path, f"paths: {{{second}: {first}}}\n")
    assert msg.endswith(f"paths.{second} ({first}) is the same folder as paths.{first} ({first}): "
                        "the folders must not overlap")


@pytest.mark.parametrize(("inner", "outer"), PAIRS + [(b, a) for a, b in PAIRS])
def test_a_folder_inside_another_is_refused(tmp_path, inner, outer):
    msg = refused(tmp_path, f"paths: {{{inner}: {outer}/done}}\n")
    assert f"paths.{inner} ({outer}/done) is inside paths.{outer} ({outer}): the folders must not overlap" in msg


def test_the_issue_config_archive_inbox(tmp_path):
    msg = refused(tmp_path, "paths: {archive: inbox}\n")
    assert msg.startswith(str(tmp_path / "coverwatch.yaml") + ": paths.archive (inbox) ")


def test_overlap_is_found_after_resolving_symlinks(tmp_path):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "arch").symlink_to(tmp_path / "inbox")
    msg = refused(tmp_path, "paths: {archive: arch/old}\n")
    assert "paths.archive (arch/old" in msg and "is inside paths.inbox (inbox)" in msg
    msg = refused(tmp_path, "paths: {archive: ./inbox/../arch}\n")
    assert "is the same folder as paths.inbox (inbox)" in msg


@pytest.mark.parametrize("name", FOLDER_NAMES)
@pytest.mark.parametrize("value", [".", "..", "''", "sub/../.."])
def test_a_folder_may_not_be_or_contain_the_home(tmp_path, name, value):
    home = tmp_path / "home"
    home.mkdir()
    msg = refused(home, f"paths: {{{name}: {value}}}\n")
    assert f"paths.{name} (" in msg and "the home folder" in msg and "coverwatch.yaml" in msg


@pytest.mark.parametrize("name", FOLDER_NAMES)
@pytest.mark.parametrize("value", ["/", "/etc", "/etc/coverwatch", "/usr", "/usr/local/covers", "/bin", "/sbin",
                                   "/lib", "/lib64", "/boot", "/dev", "/proc", "/sys/x", "/var", "/home", "/root",
                                   "/tmp", "/srv", "/mnt", "/run", "~", "/etc/../etc"])
def test_system_folders_are_refused(tmp_path, name, value):
    value = str(Path.home()) if value == "~" else value
    msg = refused(tmp_path, f"paths: {{{name}: '{value}'}}\n")
    assert msg.endswith("is a system folder, not a place for coverwatch's folders") or \
        msg.endswith("is inside a system folder, not a place for coverwatch's folders"), msg
    assert f"paths.{name} ({value}" in msg  # "(/lib, which is /usr/lib)" where /lib is a symlink


@pytest.mark.parametrize("value", ["/mnt/share/covers", "/srv/shared/inbox", "/var/lib/coverwatch/inbox",
                                   "/run/media/alice/USB/covers", "/tmp/covers", "../elsewhere"])
def test_folders_outside_the_home_are_allowed(tmp_path, value):
    home = tmp_path / "home"
    home.mkdir()
    assert str(load_config(write(home, f"paths: {{inbox: '{value}'}}\n")).paths.inbox) == value


def test_two_folders_outside_the_home_must_not_overlap_either(tmp_path):
    share = tmp_path / "share"
    msg = refused(tmp_path, f"paths: {{inbox: '{share}', labeled: '{share}/labeled'}}\n")
    assert f"paths.labeled ({share}/labeled) is inside paths.inbox ({share})" in msg


@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_the_database_file_must_not_be_in_a_folder(tmp_path, name):
    msg = refused(tmp_path, f"database: sqlite:///{name}/cw.db\n")
    assert f"database (sqlite:///{name}/cw.db) is inside paths.{name} ({name})" in msg


def test_sighup_with_overlapping_folders_keeps_the_running_config(home, caplog):
    with running(home) as d, caplog.at_level(logging.ERROR):
        assert rows(home) == []  # the helper remembers the database URL before the config breaks
        configure(home, paths={"archive": "inbox"})
        d.request_reload()
        line = wait_for(lambda: [r.getMessage() for r in caplog.records if "reload rejected" in r.getMessage()])
        assert "paths.archive (inbox) is the same folder as paths.inbox (inbox)" in line[0]
        assert d.cfg.paths.archive == "archive"
        copy_images(home / "inbox", 2)
        rs = final_rows(home, 2)
    assert len(rs) == 2 and not list((home / "inbox").iterdir())
    assert len([p for p in (home / "archive").rglob("*") if p.is_file()]) == 2


# -- task-dependent defaults: weights, base and image sizes follow `task` unless set ------------------------


@pytest.mark.parametrize(("task", "weights", "base", "imgsz"), [
    ("detect", "yolo11n.pt", "yolo11n.yaml", 640),
    ("classify", "yolo11n-cls.pt", "yolo11n-cls.yaml", 224),
])
def test_task_dependent_defaults_follow_the_task(tmp_path, task, weights, base, imgsz):
    cfg = load_config(write(tmp_path, f"task: {task}\n"))
    assert (cfg.model.weights, cfg.model.imgsz) == (weights, imgsz)
    assert (cfg.training.base, cfg.training.imgsz) == (base, imgsz)


def test_auto_means_follow_the_task(tmp_path):
    cfg = load_config(write(tmp_path, "task: classify\nmodel: {weights: auto, imgsz: auto}\n"
                                      "training: {base: auto, imgsz: auto}\n"))
    assert (cfg.model.weights, cfg.model.imgsz, cfg.training.base, cfg.training.imgsz) == (
        "yolo11n-cls.pt", 224, "yolo11n-cls.yaml", 224)


def test_settings_given_are_kept(tmp_path):
    cfg = load_config(write(tmp_path, "task: classify\nmodel: {weights: yolo11s-cls.pt, imgsz: 320}\n"
                                      "training: {base: yolov8m-cls.yaml, imgsz: 256}\n"))
    assert (cfg.model.weights, cfg.model.imgsz, cfg.training.base, cfg.training.imgsz) == (
        "yolo11s-cls.pt", 320, "yolov8m-cls.yaml", 256)


@pytest.mark.parametrize(("task", "text", "expected"), [
    ("classify", "training: {base: yolo11n.yaml}",
     "training.base: yolo11n.yaml is a detection model but task is classify; use yolo11n-cls.yaml or remove the key"),
    ("classify", "training: {base: yolov8s.yaml}",
     "training.base: yolov8s.yaml is a detection model but task is classify; use yolov8s-cls.yaml or remove the key"),
    ("classify", "training: {base: yolo11n.pt}",
     "training.base: yolo11n.pt is a detection model but task is classify; use yolo11n-cls.pt or remove the key"),
    ("classify", "model: {weights: yolo11n.pt}",
     "model.weights: yolo11n.pt is a detection model but task is classify; use yolo11n-cls.pt or remove the key"),
    ("classify", "model: {weights: /opt/weights/yolo11s.pt}",
     "model.weights: /opt/weights/yolo11s.pt is a detection model but task is classify; use yolo11s-cls.pt or "
     "remove the key"),
    ("detect", "training: {base: yolo11n-cls.yaml}",
     "training.base: yolo11n-cls.yaml is a classification model but task is detect; use yolo11n.yaml or remove "
     "the key"),
    ("detect", "model: {weights: yolov8n-cls.pt}",
     "model.weights: yolov8n-cls.pt is a classification model but task is detect; use yolov8n.pt or remove the key"),
    ("detect", "training: {base: yolo11n-seg.yaml}",
     "training.base: yolo11n-seg.yaml is a segmentation model but task is detect; use yolo11n.yaml or remove the "
     "key"),
    ("classify", "model: {weights: yolo11n-pose.pt}",
     "model.weights: yolo11n-pose.pt is a pose model but task is classify; use yolo11n-cls.pt or remove the key"),
    ("detect", "training: {base: yolo11n-obb.yaml}",
     "training.base: yolo11n-obb.yaml is an oriented-box model but task is detect; use yolo11n.yaml or remove "
     "the key"),
])
def test_a_model_of_another_task_is_a_config_error(tmp_path, task, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"task: {task}\n{text}\n"))
    assert str(err.value) == f"{tmp_path / 'coverwatch.yaml'}: {expected}"


@pytest.mark.parametrize("name", ["models/v0003/weights/best.pt", "best.pt", "covers-v2.pt", "my-cls-net.yaml",
                                  "/srv/models/genre.pt"])
@pytest.mark.parametrize("task", ["detect", "classify"])
def test_names_that_are_not_ultralytics_variants_are_not_judged(tmp_path, task, name):
    cfg = load_config(write(tmp_path, f"task: {task}\nmodel: {{weights: {name}}}\ntraining: {{base: {name}}}\n"))
    assert cfg.model.weights == name and cfg.training.base == name


def test_the_training_settings_get_the_resolved_values(tmp_path):
    from watcher.config import training_settings

    settings = training_settings(load_config(write(tmp_path, "task: classify\n")))
    assert (settings.task, settings.base, settings.imgsz) == ("classify", "yolo11n-cls.yaml", 224)


def test_every_training_key_reaches_the_pipeline_once_as_frozen_values(tmp_path):
    """TrainingConfig declares the keys and defaults; pipeline gets them as frozen values with none of its own,
    the dataset options once (the dataset build and the report take the same value), and a run's params
    give the same settings back."""
    from dataclasses import FrozenInstanceError, fields

    from pipeline.settings import DatasetOptions, TrainingSettings
    from watcher.config import TrainingConfig, dataset_options, training_settings

    cfg = load_config(write(tmp_path, "training: {val_fraction: 0.3, balance: oversample, ambiguity_iou: 0.6, "
                                      "imbalance_warn_ratio: 3, max_repeat: 2, conflicts: latest, epochs: 7, "
                                      "device: '1', reclassify_days: 3, oom_imgsz_steps: [320], audit_folds: 4, "
                                      "audit_epochs: 2}\n"
                                      "watch: {near_duplicate_bits: 4}\n"))
    settings = training_settings(cfg)
    assert settings.dataset == dataset_options(cfg) == DatasetOptions(
        val_fraction=0.3, balance="oversample", ambiguity_iou=0.6, imbalance_warn_ratio=3.0, max_repeat=2,
        conflicts="latest", near_duplicate_bits=4)
    assert (settings.epochs, settings.device, settings.reclassify_days, settings.oom_imgsz_steps,
            settings.audit_folds, settings.audit_epochs) == (7, "1", 3, (320,), 4, 2)
    params = settings.as_params()
    assert set(params) == set(TrainingConfig.model_fields) | {"home", "dataset_dir", "models_dir", "review_dir",
                                                              "task", "workers", "near_duplicate_bits"}
    assert TrainingSettings.from_params(params) == settings
    assert all(f.default is f.default_factory for f in fields(DatasetOptions))  # both MISSING: no defaults
    assert [f.name for f in fields(TrainingSettings) if f.default is not f.default_factory] == ["workers"]
    with pytest.raises(FrozenInstanceError):
        settings.dataset.balance = "none"


def test_a_fresh_init_config_changed_only_to_classify_resolves_for_classify(tmp_path):
    from watcher.home import init_home

    path = init_home(tmp_path / "home")
    text = path.read_text(encoding="utf-8")
    assert text.count("task: detect") == 1
    path.write_text(text.replace("task: detect", "task: classify"), encoding="utf-8")
    cfg = load_config(path)
    assert (cfg.model.weights, cfg.model.imgsz, cfg.training.base, cfg.training.imgsz) == (
        "yolo11n-cls.pt", 224, "yolo11n-cls.yaml", 224)
    detect = load_config(write(tmp_path, text))
    assert (detect.model.weights, detect.model.imgsz, detect.training.base, detect.training.imgsz) == (
        "yolo11n.pt", 640, "yolo11n.yaml", 640)


def test_the_gpu_example_config_is_valid():
    from pathlib import Path

    import configs

    cfg = load_config(Path(configs.__file__).parent / "coverwatch-gpu.yaml", check_dirs=False)
    assert cfg.task == "detect"


def test_a_reload_resolves_the_task_defaults_the_same_way(home, caplog):
    from pipeline.inference.steps import NoopStep
    from watcher.daemon import Daemon

    path = home / "coverwatch.yaml"
    d = Daemon(load_config(path), step=NoopStep())
    try:
        assert d.cfg.training.base == "yolo11n.yaml"
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("task: detect", "task: classify"), encoding="utf-8")
        with caplog.at_level(logging.WARNING):
            d.reload()
        # A task change waits for a restart; the keys that follow the task stay with the running task.
        assert (d.cfg.task, d.cfg.training.base, d.cfg.training.imgsz) == ("detect", "yolo11n.yaml", 640)
        assert "training.base, training.imgsz: a change there needs a restart" in caplog.text
        assert load_config(path).training.base == "yolo11n-cls.yaml"  # what the restart will run with
        caplog.clear()
        path.write_text(text.replace("task: detect", "task: classify").replace("base: auto", "base: yolo11s.yaml"),
                        encoding="utf-8")
        with caplog.at_level(logging.ERROR):
            d.reload()
        assert d.cfg.training.base == "yolo11n.yaml"  # the running config is kept
        assert "training.base: yolo11s.yaml is a detection model but task is classify" in caplog.text
    finally:
        d.engine.dispose()


def test_the_reports_thumbnails_go_to_pipeline_as_plain_values_with_the_inboxs_decoding_limits(tmp_path):
    from pipeline.settings import ThumbnailOptions
    from watcher.config import thumbnail_options

    cfg = load_config(write(tmp_path, "reports: {thumbnails: 0}\nwatch: {max_bytes: 1000, max_pixels: 5000}\n"))
    assert thumbnail_options(cfg) == ThumbnailOptions(newest=0, max_bytes=1000, max_pixels=5000, max_aspect=20.0)

"""The `coverwatch` command. Each command is thin: load the config, call one function, print.

Errors the user can fix (CoverwatchError) print one line and exit 2, never a traceback. A database error that
may pass by itself (locked, disk full, unreachable) is one line and exit 1, as is a database file deleted under
the daemon: systemd restarts on 1 and not on 2 (RestartPreventExitStatus=2). No line shows a URL's password.
A training run that failed (`train --wait`) prints its error in one line and exits 1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from storage.errors import CoverwatchError
from watcher.config import Config, dataset_options, load_config, resolve_config_path

log = logging.getLogger("coverwatch")


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import SQLAlchemyError

        from storage.errors import DatabaseUnavailable

        try:
            return super().invoke(ctx)
        except CoverwatchError as exc:
            click.echo(f"coverwatch: error: {_one_line(exc)}", err=True)
            ctx.exit(2)
        except DatabaseUnavailable as exc:
            click.echo(f"coverwatch: error: {_one_line(exc)}", err=True)
            ctx.exit(1)
        except SQLAlchemyError as exc:  # SQLAlchemy's own text adds the SQL and its parameters: only the cause
            click.echo(f"coverwatch: error: database: {_one_line(getattr(exc, 'orig', None) or exc)}", err=True)
            ctx.exit(1)


def _one_line(exc: BaseException) -> str:
    """The one place an error becomes the line a user sees: one line, and no password in it."""
    from storage.db import redact

    return redact("; ".join(part.strip() for part in str(exc).splitlines() if part.strip()))


def _set_config(ctx: click.Context, _param, value):
    if value is not None:
        ctx.ensure_object(dict)["config"] = value
    return value


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=True, path_type=Path),
    callback=_set_config,
    expose_value=False,
    is_eager=True,
    help="Config file (default: $COVERWATCH_CONFIG, else ./coverwatch.yaml).",
)


def _config(ctx: click.Context, *, check_dirs: bool = True) -> Config:
    return load_config(resolve_config_path(ctx.find_root().obj.get("config")), check_dirs=check_dirs)


@contextmanager
def _database(cfg: Config, **engine_options):
    """The config's database, upgraded to the current schema, for one command; disposed of at the end."""
    from storage.db import make_engine, upgrade_database

    engine = make_engine(cfg.database_url, **engine_options)
    try:
        upgrade_database(engine)
        yield engine
    finally:
        engine.dispose()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="json: one object per line, for log shippers.")
@click.version_option(package_name="coverwatch")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """coverwatch: a shared folder that classifies book covers and learns from labelled drops."""
    from watcher.logs import setup_logging

    ctx.ensure_object(dict)
    setup_logging(log_level, log_format)


@cli.command()
@click.argument("home", default=".", type=click.Path(path_type=Path))
def init(home: Path) -> None:
    """Create a home folder with a default config."""
    from watcher.home import init_home

    cfg_path = init_home(home)
    click.echo(f"created {cfg_path}; drop images into {home / 'inbox'} and start with: coverwatch -c {cfg_path} run")


@cli.command()
@config_option
@click.option("--role", type=click.Choice(["all", "inference", "training"]), default="all", show_default=True,
              help="inference: watch and classify only; training: serve the training queue only (a GPU host).")
@click.pass_context
def run(ctx: click.Context, role: str) -> None:
    """The daemon, in the foreground (what systemd starts)."""
    from watcher.daemon import Daemon

    Daemon(_config(ctx), role=role).run()


@cli.command()
@config_option
@click.pass_context
def process(ctx: click.Context) -> None:
    """One pass over everything waiting, then exit (cron/batch mode)."""
    from watcher.daemon import Daemon

    daemon = Daemon(_config(ctx))
    with click.progressbar(length=0, label="processing", file=sys.stderr) as bar:
        def advance(n: int) -> None:
            bar.length = max(bar.length or 0, bar.pos + n, len(daemon.settler) + bar.pos + n)
            bar.update(n)

        done = daemon.process_pending(progress=advance)
    click.echo(f"processed {done} files")
    if daemon.awaiting_partner:
        timeout = daemon.cfg.watch.pair_timeout_seconds
        click.echo(f"{daemon.awaiting_partner} labelled files wait for a partner; a `coverwatch process` run after "
                   f"watch.pair_timeout_seconds ({timeout:g}s) decides for them")


@cli.command()
@config_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Every quarantined file.")
@click.pass_context
def requeue(ctx: click.Context, ids: tuple[int, ...], all_: bool) -> None:
    """Send quarantined files back through the pipeline."""
    from storage.db import session_scope
    from storage.files import finish_moves
    from storage.files import requeue as requeue_rows
    from storage.names import shown
    from storage.tables import File

    if bool(ids) == all_:
        raise click.UsageError("give file IDs or --all")
    cfg = _config(ctx)
    with _database(cfg) as engine:
        inbox_rel = os.path.relpath(cfg.path("inbox"), cfg.home)
        with session_scope(engine) as s:
            rows = requeue_rows(s, cfg.home, Path(inbox_rel).as_posix(), None if all_ else list(ids))
            found = {r.id for r in rows}
        with session_scope(engine) as s:
            moved = [s.get(File, i) for i in found]
            finish_moves(s, cfg.home, moved)
            for row in moved:
                click.echo(f"requeued {row.id} {shown(row.original_name)} (was {row.reason})")
    missing = set(ids) - found
    if missing:
        raise CoverwatchError(f"not in quarantine: {', '.join(map(str, sorted(missing)))}")


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Counts, queue depth, champion model, training state."""
    from storage.db import check_writable, lost_note, session_scope
    from storage.queries import status_summary

    cfg = _config(ctx)
    with _database(cfg) as engine:
        check_writable(engine)  # it would read fine, but nothing can record anything in it
        with session_scope(engine) as s:
            summary = status_summary(s)
        summary["database_lost"] = lost_note(engine)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
    else:
        click.echo(_format_status(summary))
    # Non-zero when no daemon is alive, so a monitor can use the exit code; the JSON form is for scripts
    # that want the figures either way.
    if not as_json and not summary["daemon"]["running"]:
        ctx.exit(3)


def _format_status(s: dict) -> str:
    daemon = s["daemon"]
    lines = []
    if lost := s.get("database_lost"):
        lines.append(f"warning: the database {lost['path']} was deleted or replaced at {lost['time']} while the "
                     f"daemon ran; what it recorded before is gone (the files are in archive/); remove "
                     f"{lost['note']} once dealt with")
    if daemon["running"]:
        for w in daemon["workers"]:
            lines.append(f"daemon: running (pid {w['pid']} on {w['host']}, up {w['uptime_seconds']:.0f}s, "
                         f"last rescan {w['last_rescan'] or 'never'})")
    for w in daemon.get("cannot_write", []):
        lines.append(f"daemon: alive (pid {w['pid']} on {w['host']}), but cannot write the database: no heartbeat "
                     f"recorded for {w['heartbeat_age_seconds']:.0f}s (a full disk? see its log)")
    if not daemon["running"]:
        lines.append("daemon: not running")
    unmoved = [f"{s[k]} {what}, move pending" for k, what in (("move_pending", "processed"),
                                                               ("quarantine_move_pending", "quarantined")) if s.get(k)]
    if unmoved:  # decided and recorded, but still in the drop folder (the archive disk is full, say)
        lines.append(f"files: {'; '.join(unmoved)} (still in the drop folder; moved when it can be)")
    lines.append(f"files: {s['processed']} processed, {s['quarantined']} quarantined, {s['pending']} pending, "
                 f"{s['awaiting_model']} awaiting a model, {s['awaiting_partner']} awaiting a label partner "
                 f"({s['duplicates']} duplicates)")
    oldest = s["oldest_waiting_seconds"]
    lines.append(f"queue: {s['queue_depth']} seen, not yet registered; oldest waiting file: "
                 f"{'none' if oldest is None else f'{oldest:.0f}s'}")
    report = s["last_report"]
    lines.append(f"last report: {report['path'] + ' at ' + report['time'] if report else 'none yet'}")
    metrics = s["champion_metrics"] or {}
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, (int, float)))
    lines.append(f"champion: {s['champion'] or 'none yet'}" + (f" ({shown})" if shown else ""))
    t = s["training"]
    lines.append("training: idle" if t is None else f"training: {t['state']} epoch {t['epoch'] or 0}/{t['epochs'] or '?'}")
    if s.get("last_training"):
        lines.append(_format_last_training(s["last_training"]))
    return "\n".join(lines)


def _format_last_training(t: dict) -> str:
    """`last training: run 1 v0001 failed 2026-12-01 20:40: TypeError: ...` (local time)."""
    when = ""
    if t["finished_at"]:
        from datetime import datetime

        when = " " + datetime.fromisoformat(t["finished_at"]).astimezone().strftime("%Y-%m-%d %H:%M")
    if t["state"] == "failed":
        outcome = t["error"]
    else:
        outcome = f"{t['model_state']} ({t['decision']})" if t["model_state"] else "no model recorded"
    return f"last training: run {t['run']} {t['version'] or '-'} {t['state']}{when}: {outcome}"


@cli.command()
@config_option
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check torch/torchvision/CUDA/ultralytics and the home folder; say how to fix."""
    from watcher.doctor import run_checks

    home = None
    try:
        home = _config(ctx).home
    except CoverwatchError as exc:
        click.echo(f"config: {exc}")
    checks = run_checks(home)
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        click.echo(f"{mark} {c.name}: {c.detail}" + (f"\n     fix: {c.fix}" if c.fix else ""))
    if home is None or not all(c.ok for c in checks):
        ctx.exit(1)


@cli.command()
@config_option
@click.argument("urls", nargs=-1, required=True)
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds for the connect and each wait for data.")
@click.pass_context
def fetch(ctx: click.Context, urls: tuple[str, ...], timeout: float) -> None:
    """Download images into the inbox (size and type checked)."""
    from pipeline.errors import FetchError
    from pipeline.intake.fetch import fetch_to_inbox

    cfg = _config(ctx)
    inbox = cfg.path("inbox")
    failed = 0
    for url in urls:
        try:
            saved = fetch_to_inbox(url, inbox, max_bytes=cfg.watch.max_bytes, timeout=timeout)
        except FetchError as exc:
            failed += 1
            shown = "".join(c if c.isprintable() else "?" for c in url)  # one line per failure, whatever the URL
            click.echo(f"fetch: {shown}: {exc.code}: {exc}", err=True)
        else:
            click.echo(str(saved))
    if failed:
        ctx.exit(2)


@cli.group()
def classes() -> None:
    """The class registry (names are the identity; the dataset's ids are their order)."""


@classes.command("export")
@config_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def classes_export(ctx: click.Context, file: Path) -> None:
    """Write the class names as labelImg's predefined_classes.txt."""
    from pipeline.labels.classes import export_classes

    with _database(_config(ctx)) as engine:
        names = export_classes(engine, file)
    click.echo(f"wrote {len(names)} class names to {file}")


@cli.group()
def dataset() -> None:
    """The managed YOLO dataset."""


@dataset.command("export")
@config_option
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def dataset_export(ctx: click.Context, dest: Path) -> None:
    """A self-contained copy of the managed dataset for `yolo train data=DEST/data.yaml`."""
    from pipeline.labels.dataset import build_dataset, export_dataset

    cfg = _config(ctx)
    with _database(cfg) as engine:
        build_dataset(engine, cfg.home, cfg.path("dataset"), dataset_options(cfg.training))  # bring it up to date
    export_dataset(cfg.path("dataset"), dest)
    click.echo(f"exported the dataset to {dest}; train with: yolo train data={dest / 'data.yaml'}")


@cli.command()
@config_option
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (default: reports/coverwatch-YYYYMMDD-HHMM.xlsx and reports/latest.xlsx).")
@click.pass_context
def report(ctx: click.Context, output: Path | None) -> None:
    """Write the Excel report now."""
    from pipeline.report.workbook import publish_report, write_report
    from storage.db import CLI_BUSY_TIMEOUT_MS

    cfg = _config(ctx)
    with _database(cfg, busy_timeout_ms=CLI_BUSY_TIMEOUT_MS) as engine:
        options = {"home": cfg.home, "low_confidence": cfg.model.review_below,
                   "labels": dataset_options(cfg.training)}
        if output is None:
            path = publish_report(engine, cfg.path("reports"), keep=cfg.reports.keep, **options)
        else:
            path = write_report(engine, output, **options)
    click.echo(str(path))


@cli.command()
@config_option
@click.option("--wait", is_flag=True, help="Run it here, in the foreground, and print the outcome.")
@click.pass_context
def train(ctx: click.Context, wait: bool) -> None:
    """Train now on the managed dataset; promotes if better (the daemon runs it, or --wait runs it here)."""
    from pipeline.training.queue import request_training
    from pipeline.training.supervisor import run_until_done
    from watcher.config import training_settings

    cfg = _config(ctx)
    with _database(cfg) as engine:
        run_id, merged = request_training(engine, "manual")
        click.echo(f"training run {run_id} {'was already queued; request merged' if merged else 'queued'}")
        if not wait:
            return
        out = run_until_done(engine, training_settings(cfg), run_id, database_url=cfg.database_url,
                             on_progress=lambda r: click.echo(_format_training(r), err=True))
    for a in out["attempts"]:
        if a["outcome"] != "ok":
            click.echo(f"attempt {a['n']}: {a['outcome']}: {a['reason']}")
    if out["state"] == "failed":
        # Not a CoverwatchError's exit 2 (a bad config or argument): the run itself failed.
        click.echo(f"coverwatch: error: training run {run_id} failed: {out['error']}", err=True)
        ctx.exit(1)
    click.echo(f"{out['version']}: {out['model_state']} ({out['decision']})")


def _format_training(r: dict) -> str:
    eta = f", about {r['eta_seconds']:.0f}s left" if r.get("eta_seconds") else ""
    losses = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in (r.get("losses") or {}).items())
    return (f"training run {r['id']} ({r['version'] or 'not started'}): {r['state']} epoch {r['epoch'] or 0}/"
            f"{r['epochs'] or '?'}{eta}" + (f"; {losses}" if losses else ""))


@cli.group()
def models() -> None:
    """The model registry: trained versions, the champion, promotion and rollback."""


@models.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """Every version, newest first."""
    from pipeline.training.registry import list_models

    rows = _with_engine(ctx, list_models)
    if as_json:
        click.echo(json.dumps(rows, default=str, ensure_ascii=False))
        return
    if not rows:
        click.echo("no trained models yet")
    for m in rows:
        if m["state"] == "failed":
            click.echo(f"{m['version']}  {'failed':<11} {m['created_at']:%Y-%m-%d %H:%M}  {m['error']}")
            continue
        score = "-" if m["score"] is None else f"{m['score']:.4f}"
        click.echo(f"{m['version']}  {m['state']:<11} {m['score_name']} {score}  {m['classes']} classes  "
                   f"{m['created_at']:%Y-%m-%d %H:%M}  {m['decision'] or ''}")


@models.command("promote")
@config_option
@click.argument("version")
@click.pass_context
def models_promote(ctx: click.Context, version: str) -> None:
    """Make VERSION the champion (the daemon switches to it on its next batch)."""
    from pipeline.training.registry import promote_version

    mv = _with_engine(ctx, lambda engine: promote_version(engine, version))
    click.echo(f"{mv.version} is the champion")


@models.command("rollback")
@config_option
@click.pass_context
def models_rollback(ctx: click.Context) -> None:
    """Give the champion role back to the previous champion."""
    from pipeline.training.registry import rollback

    old, new = _with_engine(ctx, rollback)
    click.echo(f"rolled back from {old} to {new}; {new} is the champion")


def _with_engine(ctx: click.Context, fn):
    with _database(_config(ctx)) as engine:
        return fn(engine)


def _redacted_traceback(kind, value, tb) -> None:
    """A bug's traceback still reaches stderr, without any database password in it."""
    import traceback

    from storage.db import redact

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def main() -> None:
    # Ultralytics prints banners to stdout on every model load and export; our own log lines say what matters.
    os.environ.setdefault("YOLO_VERBOSE", "False")
    sys.excepthook = _redacted_traceback
    cli(prog_name="coverwatch")


if __name__ == "__main__":
    sys.exit(main())

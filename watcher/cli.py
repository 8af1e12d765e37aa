"""The `coverwatch` command. Each command is thin: load the config, call one function, print.

Errors the user can fix (CoverwatchError) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from storage.errors import CoverwatchError
from watcher.config import Config, load_config, resolve_config_path

log = logging.getLogger("coverwatch")


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CoverwatchError as exc:
            click.echo(f"coverwatch: error: {exc}", err=True)
            ctx.exit(2)


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
@click.pass_context
def run(ctx: click.Context) -> None:
    """The daemon, in the foreground (what systemd starts)."""
    from watcher.daemon import Daemon

    Daemon(_config(ctx)).run()


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Counts, queue depth, champion model, training state."""
    from storage.db import make_engine, session_scope, upgrade_database
    from storage.queries import status_summary

    cfg = _config(ctx)
    engine = make_engine(cfg.database_url)
    try:
        upgrade_database(engine)
        with session_scope(engine) as s:
            summary = status_summary(s)
    finally:
        engine.dispose()
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
    if daemon["running"]:
        for w in daemon["workers"]:
            lines.append(f"daemon: running (pid {w['pid']} on {w['host']}, up {w['uptime_seconds']:.0f}s, "
                         f"last rescan {w['last_rescan'] or 'never'})")
    else:
        lines.append("daemon: not running")
    lines.append(f"files: {s['processed']} processed, {s['quarantined']} quarantined, {s['pending']} pending, "
                 f"{s['awaiting_model']} awaiting a model, {s['awaiting_partner']} awaiting a label partner "
                 f"({s['duplicates']} duplicates)")
    oldest = s["oldest_waiting_seconds"]
    lines.append(f"queue: {s['queue_depth']} seen, not yet registered; oldest waiting file: "
                 f"{'none' if oldest is None else f'{oldest:.0f}s'}")
    lines.append(f"champion: {s['champion'] or 'none yet'}")
    t = s["training"]
    lines.append("training: idle" if t is None else f"training: {t['state']} epoch {t['epoch'] or 0}/{t['epochs'] or '?'}")
    return "\n".join(lines)


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


def main() -> None:
    cli(prog_name="coverwatch")


if __name__ == "__main__":
    sys.exit(main())

"""Commands that run or feed the service: init, run, process, requeue, doctor, fetch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from storage.errors import CoverwatchError
from watcher.cli.base import cli, command_config, config_option, open_database

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
    from watcher.daemon import Daemon, spare_the_collector

    daemon = Daemon(command_config(ctx), role=role)
    spare_the_collector()
    daemon.run()


@cli.command()
@config_option
@click.pass_context
def process(ctx: click.Context) -> None:
    """One pass over everything waiting, then exit (cron/batch mode)."""
    from watcher.daemon import Daemon, spare_the_collector

    daemon = Daemon(command_config(ctx))
    spare_the_collector()
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
    cfg = command_config(ctx)
    with open_database(cfg) as engine:
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
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check torch/torchvision/CUDA/ultralytics and the home folder; say how to fix."""
    from watcher.doctor import run_checks

    home = None
    try:
        home = command_config(ctx).home
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

    cfg = command_config(ctx)
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



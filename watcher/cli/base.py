"""What every command shares: the root group, the -c option, the config and database of one command, the error lines.

Errors the user can fix (CoverwatchError) print one line and exit 2, never a traceback. A database error that
may pass by itself (locked, disk full, unreachable) is one line and exit 1, as is a database file deleted under
the daemon: systemd restarts on 1 and not on 2 (RestartPreventExitStatus=2). No line shows a URL's password.
A training run that failed (`train --wait`) prints its error in one line and exits 1.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import click

from storage.errors import CoverwatchError
from watcher.config import Config, load_config, resolve_config_path

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


def command_config(ctx: click.Context, *, check_dirs: bool = True) -> Config:
    return load_config(resolve_config_path(ctx.find_root().obj.get("config")), check_dirs=check_dirs)


@contextmanager
def open_database(cfg: Config, **engine_options):
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


def with_database(ctx: click.Context, fn):
    with open_database(command_config(ctx)) as engine:
        return fn(engine)

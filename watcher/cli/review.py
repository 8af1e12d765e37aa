"""`coverwatch review export`: the review workbook, the images that need a person, with a correct-class drop-down."""

from __future__ import annotations

from pathlib import Path

import click

from watcher.cli.base import cli, command_config, config_option, open_database
from watcher.config import review_options


@cli.group()
def review() -> None:
    """Corrections from the spreadsheet: fill the review workbook, drop it into labeled/."""


@review.command("export")
@config_option
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (default: reports/review-YYYYMMDD-HHMM.xlsx and reports/review-latest.xlsx).")
@click.pass_context
def review_export(ctx: click.Context, output: Path | None) -> None:
    """Write the review workbook now."""
    from pipeline.review.export import publish_review_workbook, write_review_workbook
    from storage.db import CLI_BUSY_TIMEOUT_MS

    cfg = command_config(ctx)
    with open_database(cfg, busy_timeout_ms=CLI_BUSY_TIMEOUT_MS) as engine:
        if output is None:
            book = publish_review_workbook(engine, cfg.path("reports"), home=cfg.home, options=review_options(cfg),
                                           keep=cfg.reports.keep)
        else:
            book = write_review_workbook(engine, output, home=cfg.home, options=review_options(cfg))
    more = f" (the {book.rows} least sure of {book.total})" if book.total > book.rows else ""
    click.echo(f"{book.path}: {book.rows} images need a person{more}; fill the 'correct class' column and drop "
               f"the file into labeled/")

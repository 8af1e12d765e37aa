"""Commands on the labelled data and what is made from it: classes export, dataset export, report."""

from __future__ import annotations

from pathlib import Path

import click

from watcher.cli.base import cli, command_config, config_option, open_database
from watcher.config import dataset_options, review_options, thumbnail_options

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

    with open_database(command_config(ctx)) as engine:
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

    cfg = command_config(ctx)
    with open_database(cfg) as engine:
        build_dataset(engine, cfg.home, cfg.path("dataset"), dataset_options(cfg))  # bring it up to date
    export_dataset(cfg.path("dataset"), dest)
    click.echo(f"exported the dataset to {dest}; train with: yolo train data={dest / 'data.yaml'}")


@cli.command()
@config_option
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (default: reports/coverwatch-YYYYMMDD-HHMM.xlsx and reports/latest.xlsx, with the "
                   "review workbook beside them).")
@click.pass_context
def report(ctx: click.Context, output: Path | None) -> None:
    """Write the Excel report now."""
    from pipeline.report.workbook import publish_report, write_report
    from storage.db import CLI_BUSY_TIMEOUT_MS

    cfg = command_config(ctx)
    with open_database(cfg, busy_timeout_ms=CLI_BUSY_TIMEOUT_MS) as engine:
        options = {"home": cfg.home, "low_confidence": cfg.model.review_below,
                   "labels": dataset_options(cfg), "thumbnails": thumbnail_options(cfg)}
        if output is None:
            path = publish_report(engine, cfg.path("reports"), keep=cfg.reports.keep, review=review_options(cfg),
                                  **options)
        else:
            path = write_report(engine, output, **options)
    click.echo(str(path))


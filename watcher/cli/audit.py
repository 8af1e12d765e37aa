"""`coverwatch audit`: out-of-sample predictions for every labelled image; label issues and class overlap."""

from __future__ import annotations

import click

from watcher.cli.base import cli, command_config, config_option, open_database


@cli.command()
@config_option
@click.option("--wait", is_flag=True, help="Run it here, in the foreground, and print what it found.")
@click.option("--folds", type=click.IntRange(2, 20), help="K of the K-fold (default: training.audit_folds, else 3).")
@click.option("--epochs", type=click.IntRange(1), help="Epochs of each fold's run (default: training.audit_epochs).")
@click.pass_context
def audit(ctx: click.Context, wait: bool, folds: int | None, epochs: int | None) -> None:
    """Rank likely label errors and overlapping classes (K-fold; the daemon runs it, or --wait runs it here)."""
    from pipeline.errors import AuditError
    from pipeline.training.queue import request_training
    from pipeline.training.supervisor import run_until_done
    from watcher.config import training_settings

    cfg = command_config(ctx)
    if cfg.task != "classify":
        raise AuditError("classify_only", "the label audit covers task: classify only for now; this home is "
                                          f"task: {cfg.task}")
    with open_database(cfg) as engine:
        if not _labelled(engine):
            raise AuditError("no_labels", "no labelled images to audit yet: drop labelled images into "
                                          f"{cfg.paths.labeled}/ first")
        run_id, merged = request_training(engine, "manual", kind="audit", folds=folds or cfg.training.audit_folds
                                          or None, epochs=epochs)
        click.echo(f"audit run {run_id} {'was already queued; request merged' if merged else 'queued'}")
        if not wait:
            return
        out = run_until_done(engine, training_settings(cfg), run_id, database_url=cfg.database_url,
                             on_progress=lambda r: click.echo(_format_progress(r), err=True))
        if out["state"] == "failed":
            click.echo(f"coverwatch: error: audit run {run_id} failed: {out['error']}", err=True)
            ctx.exit(1)
        from pipeline.training.audit_record import audit_outcome

        click.echo(_format_outcome(out["version"], audit_outcome(engine, run_id)))


def _labelled(engine) -> int:
    from sqlalchemy import func, select

    from storage.db import session_scope
    from storage.tables import Sample

    with session_scope(engine) as s:
        return s.scalar(select(func.count()).select_from(Sample).where(Sample.replaced_at.is_(None))) or 0


def _format_progress(r: dict) -> str:
    return (f"audit run {r['id']} ({r['version'] or 'not started'}): {r['state']} fold {r['fold'] or 0}/"
            f"{r['folds'] or '?'} epoch {r['epoch'] or 0}/{r['epochs'] or '?'}")


def _format_outcome(version: str, a: dict | None) -> str:
    if a is None:
        return f"{version}: no findings recorded"
    lines = [f"{version}: {a['folds']} folds x {a['epochs']} epochs, {a['images']} labelled images; label health "
             f"{a['health_score']:.2f} (1.0: no likely label errors); the fold models are right on "
             f"{a['accuracy']:.0%} of the images they never saw"]
    if a["weak"]:
        lines.append(f"warning: that is no better than always answering the largest class ({a['majority_share']:.0%}): "
                     "the models learned too little for these findings to say much about the labels; run longer "
                     "(--epochs, training.audit_epochs) or from a pretrained training.base")
    if a["flagged"]:
        lines.append(f"{a['flagged']} images look mislabelled" + (
            f"; copied with their labels to {a['review_folder']}/ (fix them in labelImg, drop the pairs into "
            "labeled/)" if a["review_folder"] else ""))
        lines += [f"  {i['name']}: labelled {i['given']}, looks like {i['suggested']} (quality {i['quality']:.2f})"
                  for i in a["flagged_images"]]
    else:
        lines.append("no image looks mislabelled")
    for p in a["pairs"]:
        lines.append(f"  {p['a']} / {p['b']}: {p['overlapping']} images overlap ({p['share']:.0%} of the "
                     f"pair's images): {p['recommendation']}")
    if a["worst_classes"]:
        lines.append("classes with the most label issues: " + ", ".join(
            f"{c['class']} ({c['label_issues']})" for c in a["worst_classes"]))
    return "\n".join(lines)

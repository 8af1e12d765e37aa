"""Training and the model registry: train, models list / promote / rollback."""

from __future__ import annotations

import json

import click

from watcher.cli.base import cli, command_config, config_option, open_database, with_database

@cli.command()
@config_option
@click.option("--wait", is_flag=True, help="Run it here, in the foreground, and print the outcome.")
@click.pass_context
def train(ctx: click.Context, wait: bool) -> None:
    """Train now on the managed dataset; promotes if better (the daemon runs it, or --wait runs it here)."""
    from pipeline.training.queue import request_training
    from pipeline.training.supervisor import run_until_done
    from watcher.config import training_settings

    cfg = command_config(ctx)
    with open_database(cfg) as engine:
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

    rows = with_database(ctx, list_models)
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
        for line in _quality_lines(m):
            click.echo(f"    {line}")


def _quality_lines(m: dict) -> list[str]:
    """Under a version: its calibration, its figures per class and its confusion matrix (latest evaluation)."""
    out = []
    if m["temperature"] is not None:
        out.append(f"calibration: temperature {m['temperature']:.2f}, expected calibration error "
                   f"{_figure(m['ece_before'], 3)} -> {_figure(m['ece_after'], 3)}")
    confusion = m["confusion"] or {"classes": [], "matrix": []}
    width = max([5, *(len(c["class_name"]) for c in m["per_class"]), *map(len, confusion["classes"])])
    if m["per_class"]:
        detect = m["task"] == "detect"
        out.append(f"{'class':<{width}}  images  precision  recall" + ("   mAP50" if detect else ""))
        for c in m["per_class"]:
            out.append(f"{c['class_name']:<{width}}  {_figure(c.get('images'), 0):>6}  "
                       f"{_figure(c.get('precision'), 2):>9}  {_figure(c.get('recall'), 2):>6}"
                       + (f"  {_figure(c.get('map50'), 2):>6}" if detect else ""))
    if confusion["matrix"]:
        cell = max(3, *(len(str(v)) for row in confusion["matrix"] for v in row))
        out.append(f"confusion matrix, rows true, columns predicted ({', '.join(confusion['classes'])}):")
        out += [f"{name:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row)
                for name, row in zip(confusion["classes"], confusion["matrix"])]
    return out


def _figure(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if digits else str(int(value))


@models.command("promote")
@config_option
@click.argument("version")
@click.pass_context
def models_promote(ctx: click.Context, version: str) -> None:
    """Make VERSION the champion (the daemon switches to it on its next batch)."""
    from pipeline.training.registry import promote_version

    mv = with_database(ctx, lambda engine: promote_version(engine, version))
    click.echo(f"{mv.version} is the champion")


@models.command("rollback")
@config_option
@click.pass_context
def models_rollback(ctx: click.Context) -> None:
    """Give the champion role back to the previous champion."""
    from pipeline.training.registry import rollback

    old, new = with_database(ctx, rollback)
    click.echo(f"rolled back from {old} to {new}; {new} is the champion")

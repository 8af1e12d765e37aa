"""`coverwatch status`: the counts, the queue, the champion and training, in lines for people or in JSON."""

from __future__ import annotations

import json

import click

from watcher.cli.base import cli, command_config, config_option, open_database

@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Counts, queue depth, champion model, training state."""
    from storage.db import check_writable, lost_note, session_scope
    from storage.queries import status_summary

    cfg = command_config(ctx)
    with open_database(cfg) as engine:
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
                 f"({s['duplicates']} duplicates, {s['near_duplicates']} looking like an earlier file)")
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
    if a := s.get("audit"):
        lines.append(f"audit: {a['state']} fold {a['fold'] or 0}/{a['folds'] or '?'} epoch {a['epoch'] or 0}/"
                     f"{a['epochs'] or '?'}")
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


"""Optional Prometheus endpoint on localhost (`metrics.port`): the same figures as `coverwatch status`,
read from the database at scrape time, so they agree with it by construction."""

from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from storage.db import session_scope
from storage.queries import status_summary

log = logging.getLogger(__name__)


class StatusCollector:
    def __init__(self, engine, worker_uptime):
        self.engine = engine
        self.worker_uptime = worker_uptime

    def collect(self):
        with session_scope(self.engine) as s:
            st = status_summary(s)
        files = GaugeMetricFamily("coverwatch_files", "Files per state", labels=["state"])
        for state in ("pending", "processed", "quarantined", "awaiting_model", "awaiting_partner"):
            files.add_metric([state], st[state])
        yield files
        yield GaugeMetricFamily("coverwatch_duplicates", "Files recorded as duplicates", value=st["duplicates"])
        yield GaugeMetricFamily("coverwatch_queue_depth", "Files seen, not yet registered", value=st["queue_depth"])
        yield GaugeMetricFamily("coverwatch_oldest_waiting_seconds", "Age of the oldest waiting file",
                                value=st["oldest_waiting_seconds"] or 0)
        yield GaugeMetricFamily("coverwatch_uptime_seconds", "Seconds since this daemon started",
                                value=self.worker_uptime())
        champion = GaugeMetricFamily("coverwatch_champion_info", "The champion model", labels=["version"])
        champion.add_metric([st["champion"] or ""], 1 if st["champion"] else 0)
        yield champion
        t = st["training"] or {}
        yield GaugeMetricFamily("coverwatch_training_epoch", "Current training epoch (0 when idle)",
                                value=t.get("epoch") or 0)


def serve_metrics(port: int, engine, worker_uptime):
    """Start the endpoint on 127.0.0.1:port in a daemon thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    registry.register(StatusCollector(engine, worker_uptime))
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    log.info("metrics on http://127.0.0.1:%d/metrics", port)
    return server, thread

"""Prometheus metrics of one running App, on a registry of its own (never the global one).

Counters and the latency histogram are updated where things happen (the mailbox and outbox
workers); gauges that describe state (connected, seconds since the last poll, loop liveness,
outbox depth, token expiry) are read fresh by `refresh_*` right before each scrape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

from mailbridge import __version__

OUTCOMES = ("ticket_created", "follow_up", "rejected", "quarantined", "discarded", "duplicate")
ACK_RESULTS = ("sent", "retry", "failed")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric mailbridge exports; see docs/operator-guide.md for the list."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fetched = Counter(
            "mailbridge_messages_fetched", "Messages fetched from IMAP.", ["mailbox"], registry=r
        )
        self.processed = Counter(
            "mailbridge_messages_processed",
            "Messages processed, by outcome (duplicate: already held, only settled).",
            ["mailbox", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "mailbridge_messages_rejected",
            "Messages rejected by the screen (no ticket; the sender is told why).",
            ["mailbox"],
            registry=r,
        )
        self.quarantined = Counter(
            "mailbridge_messages_quarantined",
            "Messages that failed processing and were kept for replay.",
            ["mailbox"],
            registry=r,
        )
        self.latency = Histogram(
            "mailbridge_processing_seconds",
            "Time to process one message (parse to commit).",
            ["mailbox"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.connection_errors = Counter(
            "mailbridge_imap_connection_errors",
            "IMAP connections lost or refused (the worker retries with backoff).",
            ["mailbox"],
            registry=r,
        )
        self.connected = Gauge(
            "mailbridge_imap_connected",
            "1 while the folder's IMAP connection is up.",
            ["mailbox"],
            registry=r,
        )
        self.since_poll = Gauge(
            "mailbridge_imap_seconds_since_last_poll",
            "Seconds since the folder was last drained successfully (+Inf: never).",
            ["mailbox"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "mailbridge_oauth_token_expiry_timestamp_seconds",
            "When the cached OAuth2 access token expires (Unix time; 0: none fetched yet).",
            ["account", "service"],
            registry=r,
        )
        self.acks = Counter(
            "mailbridge_acks",
            "Outbox sends by result: sent, retry (scheduled again), failed (given up).",
            ["result"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "mailbridge_outbox_pending", "Outbox rows waiting to be sent.", registry=r
        )
        self.outbox_oldest = Gauge(
            "mailbridge_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending outbox row (0 when none).",
            registry=r,
        )
        self.loop_alive = Gauge(
            "mailbridge_loop_alive",
            "1 while a worker loop makes progress; 0 when it is stuck.",
            ["loop"],
            registry=r,
        )
        self.build = Info("mailbridge_build", "The running mailbridge version.", registry=r)
        self.build.info({"version": __version__})
        for result in ACK_RESULTS:
            self.acks.labels(result=result)

    def add_mailbox(self, mailbox: str) -> None:
        """Create a folder's series at zero, so dashboards see them before the first mail."""
        self.fetched.labels(mailbox=mailbox)
        self.rejected.labels(mailbox=mailbox)
        self.quarantined.labels(mailbox=mailbox)
        self.connection_errors.labels(mailbox=mailbox)
        for outcome in OUTCOMES:
            self.processed.labels(mailbox=mailbox, outcome=outcome)
        self.connected.labels(mailbox=mailbox).set(0)
        self.since_poll.labels(mailbox=mailbox).set(math.inf)

    def message_processed(self, mailbox: str, outcome: str, seconds: float) -> None:
        self.processed.labels(mailbox=mailbox, outcome=outcome).inc()
        if outcome == "rejected":
            self.rejected.labels(mailbox=mailbox).inc()
        elif outcome == "quarantined":
            self.quarantined.labels(mailbox=mailbox).inc()
        self.latency.labels(mailbox=mailbox).observe(seconds)

    def ack_result(self, result: str, count: int = 1) -> None:
        if count:
            self.acks.labels(result=result).inc(count)

    def set_mailbox_state(self, mailbox: str, *, connected: bool, since_poll: float | None) -> None:
        self.connected.labels(mailbox=mailbox).set(1 if connected else 0)
        self.since_poll.labels(mailbox=mailbox).set(math.inf if since_poll is None else since_poll)

    def set_loops(self, alive: Iterable[tuple[str, bool]]) -> None:
        for name, ok in alive:
            self.loop_alive.labels(loop=name).set(1 if ok else 0)

    def set_outbox(self, pending: int, oldest_age: float | None) -> None:
        self.outbox_depth.set(pending)
        self.outbox_oldest.set(oldest_age or 0.0)

    def set_token_expiry(self, account: str, service: str, expires_at: float | None) -> None:
        self.token_expiry.labels(account=account, service=service).set(expires_at or 0.0)

    def reference(self) -> list[tuple[str, str, str, str]]:
        """(series name, type, labels, meaning) of every metric, for the operator guide."""
        rows = []
        for metric in self._all():
            kind = metric._type
            name = metric._name + {"counter": "_total", "info": "_info"}.get(kind, "")
            if kind == "histogram":
                name += "_bucket/_sum/_count"
            labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "—"
            rows.append((name, kind, labels, metric._documentation))
        return rows

    def reference_markdown(self) -> str:
        lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {k} | {labels} | {doc} |" for n, k, labels, doc in self.reference()]
        return "\n".join(lines) + "\n"

    def _all(self) -> list[Counter | Gauge | Histogram | Info]:
        return [v for v in vars(self).values() if isinstance(v, Counter | Gauge | Histogram | Info)]

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

"""Prometheus metrics of `tandem serve` (GET /metrics): what the edge sees of its answers.

The cloud's own metrics (cloud/metrics.py) count verification work; these count what a user
of this endpoint got: how much of the drafting the cloud accepted, how often the local model
had to take over, and how long a round trip to the cloud took. Documented in the README.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from edge.engine import Generation

_RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EdgeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tandem_edge_requests", "Answers by outcome (completed, cancelled, failed)",
                                ["outcome"], registry=r)
        self.tokens = Counter("tandem_edge_generated_tokens", "Tokens answered, by who produced them",
                              ["source"], registry=r)
        self.draft_tokens = Counter("tandem_edge_draft_tokens", "Draft tokens the cloud verified", registry=r)
        self.accepted_tokens = Counter("tandem_edge_accepted_tokens", "Draft tokens the cloud accepted", registry=r)
        self.fallbacks = Counter("tandem_edge_fallbacks", "Answers the local model took over, by when "
                                 "(start: the cloud was unusable from the start; mid_answer: it failed during one)",
                                 ["at"], registry=r)
        self.degraded = Counter("tandem_edge_degraded_answers", "Completed answers marked degraded", registry=r)
        self.round_trip = Histogram("tandem_edge_cloud_round_trip_seconds", "Draft block sent to the cloud -> its "
                                    "verdict back", buckets=_RTT_BUCKETS, registry=r)
        for outcome in ("completed", "cancelled", "failed"):
            self.requests.labels(outcome=outcome)
        for at in ("start", "mid_answer"):
            self.fallbacks.labels(at=at)

    def answered(self, generation: Generation, outcome: str) -> None:
        """Records one answer once it ended (outcome: completed, cancelled or failed)."""
        self.requests.labels(outcome=outcome).inc()
        stats = generation.stats
        local = stats.local_tokens
        self.tokens.labels(source="local").inc(local)
        self.tokens.labels(source=generation.mode.value).inc(max(0, len(generation.token_ids) - local))
        self.draft_tokens.inc(stats.drafted)
        self.accepted_tokens.inc(stats.accepted)
        for seconds in stats.round_trips_s:
            self.round_trip.observe(seconds)
        if generation.degraded:
            self.fallbacks.labels(at="start" if generation.fallback_at == 0 else "mid_answer").inc()
            if outcome == "completed":
                self.degraded.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

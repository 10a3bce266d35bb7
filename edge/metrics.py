"""Prometheus metrics of `tandem serve` (GET /metrics): what the edge sees of its answers.

The cloud's own metrics (cloud/metrics.py) count verification work; these count what a user
of this endpoint got: how much of the drafting the cloud accepted, how often the local model
had to take over, and how long a round trip to the cloud took. Documented in the README.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        # Never slower than cloud-only (edge/drafting_pays.py): what the cloud decoded alone, and the
        # decision with its inputs as the last hybrid answer left them.
        self.cloud_decoded = Counter("tandem_edge_cloud_decoded_tokens", "Tokens of hybrid answers the cloud "
                                     "decoded alone because drafting did not pay", registry=r)
        self.hinted = Counter("tandem_edge_hinted_tokens", "Of those, tokens the draft had guessed ahead and the "
                              "cloud confirmed within its own steps (DecodeHint)", registry=r)
        self.mode_switches = Counter("tandem_edge_drafting_switches", "Hybrid answers' switches between drafting "
                                     "and the cloud decoding alone", registry=r)
        self.shadow = Counter("tandem_edge_shadow_predictions", "Tokens the draft predicted while the cloud decoded "
                              "alone, by whether the cloud's token matched", ["outcome"], registry=r)
        self.drafting = Gauge("tandem_edge_drafting", "1 if the last hybrid answer ended drafting, 0 if the cloud "
                              "was decoding alone", registry=r)
        self.expected_rate = Gauge("tandem_edge_expected_tokens_per_second", "The last hybrid answer's expected "
                                   "tokens per second, by mode (hybrid: drafting; cloud: the cloud alone)",
                                   ["mode"], registry=r)
        self.pays_input = Gauge("tandem_edge_drafting_pays_input", "The last hybrid answer's inputs to whether "
                                "drafting pays (acceptance per draft token; draft, round_trip, verify and cloud_step "
                                "in seconds)", ["input"], registry=r)
        # Offline-first (edge/offline.py): what the local model wrote while the cloud was away, what the
        # returning cloud confirmed or rewrote of it, and how long from its return to the first verified token.
        self.provisional = Counter("tandem_edge_provisional_tokens", "Tokens written provisionally while the cloud "
                                   "was away mid-answer (written), and of those, the ones the returning cloud "
                                   "confirmed (accepted) or replaced (rewritten)", ["outcome"], registry=r)
        self.rewinds = Counter("tandem_edge_rewinds", "Answers rewound to the first provisional token the "
                               "returning cloud disagreed with", registry=r)
        self.verification = Histogram("tandem_edge_verification_seconds", "The cloud seen back mid-answer -> the "
                                      "first token its resumed session committed", buckets=_RTT_BUCKETS, registry=r)
        for outcome in ("written", "accepted", "rewritten"):
            self.provisional.labels(outcome=outcome)
        for outcome in ("agreed", "missed"):
            self.shadow.labels(outcome=outcome)
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
        self._pays(stats)
        self.provisional.labels(outcome="written").inc(stats.provisional)
        self.provisional.labels(outcome="accepted").inc(stats.provisional_accepted)
        self.provisional.labels(outcome="rewritten").inc(stats.provisional_rewritten)
        self.rewinds.inc(stats.rewinds)
        if stats.reconnects_in_answer:
            self.verification.observe(stats.verify_s / stats.reconnects_in_answer)
        if generation.degraded:
            self.fallbacks.labels(at="start" if generation.fallback_at == 0 else "mid_answer").inc()
            if outcome == "completed":
                self.degraded.inc()

    def _pays(self, stats) -> None:
        self.cloud_decoded.inc(stats.cloud_decoded)
        self.hinted.inc(stats.hinted)
        self.mode_switches.inc(stats.mode_switches)
        self.shadow.labels(outcome="agreed").inc(stats.shadow_agreed)
        self.shadow.labels(outcome="missed").inc(stats.shadow_checked - stats.shadow_agreed)
        pays = stats.pays
        if not pays:
            return
        self.drafting.set(int(pays["drafting"]))
        self.expected_rate.labels(mode="hybrid").set(pays["hybrid_tokens_per_s"])
        self.expected_rate.labels(mode="cloud").set(pays["cloud_tokens_per_s"])
        self.pays_input.labels(input="acceptance").set(pays["acceptance"])
        for name in ("draft", "round_trip", "verify", "cloud_step"):
            self.pays_input.labels(input=name).set(pays[f"{name}_ms"] / 1000)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of the cloud (`tandem cloud --metrics-port P`, served at /metrics).

Spec-decode counters carry vLLM's names (with the tandem_ prefix), so dashboards built for
vLLM's speculative decoding read them unchanged. Each server has its own registry (tests run
several in one process). Every metric is documented in the README.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_SESSIONS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_TOKENS_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048)
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_POSITION_LABEL = 64  # drafts past this position are counted under "64" (the draft limit's default)


class CloudMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.num_drafts = Counter("tandem_spec_decode_num_drafts", "Draft blocks verified (with at least one draft)",
                                  registry=r)
        self.num_draft_tokens = Counter("tandem_spec_decode_num_draft_tokens", "Draft tokens verified", registry=r)
        self.num_accepted_tokens = Counter("tandem_spec_decode_num_accepted_tokens", "Draft tokens accepted",
                                           registry=r)
        self.accepted_per_pos = Counter("tandem_spec_decode_num_accepted_tokens_per_pos",
                                        "Draft tokens accepted, by their position in the block (0 = first draft)",
                                        ["position"], registry=r)
        self.wasted_draft_tokens = Counter("tandem_spec_decode_num_wasted_draft_tokens", "Draft tokens verified and "
                                           "rejected: forward-pass compute spent for no committed token",
                                           registry=r)
        self.generated_tokens = Counter("tandem_generated_tokens", "Tokens committed, by RPC", ["rpc"], registry=r)
        self.forward_passes = Counter("tandem_forward_passes", "Forward passes of the target (one per batch)",
                                      registry=r)
        self.batch_sessions = Histogram("tandem_batch_sessions", "Sessions per forward pass",
                                        buckets=_SESSIONS_BUCKETS, registry=r)
        self.batch_tokens = Histogram("tandem_batch_tokens", "Tokens per forward pass", buckets=_TOKENS_BUCKETS,
                                      registry=r)
        self.forward_seconds = Histogram("tandem_forward_seconds", "Wall time of one forward pass, with the "
                                         "acceptance math after it", buckets=_SECONDS_BUCKETS, registry=r)
        self.forward_pass_seconds = Counter("tandem_forward_pass_seconds", "Wall time spent in forward passes "
                                            "(tandem_forward_seconds_sum as a plain counter)", registry=r)
        # Goodput: committed tokens per second of forward pass, since the server started. For a
        # window, divide the rates: rate(tandem_generated_tokens_total) / rate(tandem_forward_pass_seconds_total).
        self.goodput = Gauge("tandem_goodput_tokens_per_forward_second", "Committed tokens per second of forward "
                             "pass since start (all RPCs)", registry=r)
        self._committed = 0
        self._forward_s = 0.0
        self.goodput.set_function(lambda: self._committed / self._forward_s if self._forward_s else 0.0)
        self.draft_cap = Gauge("tandem_goodput_draft_cap", "The cap on drafts per block the last pass's verdicts "
                               "carried (goodput shaping, cloud/goodput.py); 0: none", registry=r)
        self.queue_wait_seconds = Histogram("tandem_queue_wait_seconds", "Time work waited for the forward pass "
                                            "that ran it", buckets=_SECONDS_BUCKETS, registry=r)
        self.sessions_live = Gauge("tandem_sessions_live", "Sessions (Speculate or Generate calls) held now",
                                   registry=r)
        self.kv_cache_usage = Gauge("tandem_kv_cache_usage_ratio", "KV-cache blocks in use (sessions and prefix "
                                    "cache) as a share of the KV budget", registry=r)
        self.resumed_sessions = Counter("tandem_resumed_sessions", "Sessions opened to resume an answer whose "
                                        "stream broke (resume_token_ids), by RPC", ["rpc"], registry=r)
        for rpc in ("Speculate", "Generate"):
            self.resumed_sessions.labels(rpc=rpc)  # exported at 0 from the start
        self.drain_notices = Counter("tandem_drain_notices", "Live sessions told to resume on another replica "
                                     "while this one drained", registry=r)
        self.rpc_total = Counter("tandem_rpc", "Finished RPCs by method and status code", ["method", "code"],
                                 registry=r)
        self._http = None

    # The scheduler's reports (cloud/scheduler.py: NoMetrics lists them).

    def step(self, sessions: int, tokens: int, seconds: float) -> None:
        self.forward_passes.inc()
        self.batch_sessions.observe(sessions)
        self.batch_tokens.observe(tokens)
        self.forward_seconds.observe(seconds)
        self.forward_pass_seconds.inc(seconds)
        self._forward_s += seconds

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def shaped(self, cap: int | None) -> None:
        self.draft_cap.set(cap or 0)

    def verdict(self, drafted: int, accepted: int) -> None:
        if not drafted:
            return
        self.num_drafts.inc()
        self.num_draft_tokens.inc(drafted)
        self.num_accepted_tokens.inc(accepted)
        self.wasted_draft_tokens.inc(drafted - accepted)
        for position in range(accepted):
            self.accepted_per_pos.labels(position=str(min(position, MAX_POSITION_LABEL))).inc()

    def generated(self, rpc: str, tokens: int) -> None:
        self.generated_tokens.labels(rpc=rpc).inc(tokens)
        self._committed += tokens

    def rpc_finished(self, method: str, code: str) -> None:
        self.rpc_total.labels(method=method, code=code).inc()

    def watch(self, live_sessions, kv_used_bytes, kv_budget_bytes: int | None) -> None:
        """Gauges read on each scrape: live_sessions() and kv_used_bytes() are callables."""
        self.sessions_live.set_function(lambda: float(live_sessions()))
        if kv_budget_bytes:
            self.kv_cache_usage.set_function(lambda: kv_used_bytes() / kv_budget_bytes)

    def serve(self, host: str, port: int) -> int:
        """Serves /metrics over HTTP on a thread; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

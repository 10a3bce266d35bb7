"""deploy/grafana/tandem-dashboard.json: valid JSON, and every panel reads metrics that exist.

The metric names a panel's PromQL uses are checked against what cloud/metrics.py and
edge/metrics.py export (every sample name a family yields: _total, _bucket, _sum, _count), so
a renamed metric cannot leave a panel silently empty.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "tandem-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    from cloud.metrics import CloudMetrics
    from edge.metrics import EdgeMetrics

    names = set()
    for registry in (CloudMetrics().registry, EdgeMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_the_dashboard_is_json_and_its_panels_read_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert panels and len({p["id"] for p in panels}) == len(panels)
    exported = exported_names()
    used = set()
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            names = set(re.findall(r"\btandem_[a-z0-9_]+", target["expr"]))
            assert names, target
            assert names <= exported, (panel["title"], names - exported)
            used |= names
    # The operator metrics are on it.
    for name in ("tandem_forward_pass_seconds_total", "tandem_spec_decode_num_wasted_draft_tokens_total",
                 "tandem_spec_decode_num_accepted_tokens_per_pos_total",
                 "tandem_edge_cloud_round_trip_seconds_bucket"):
        assert name in used, name


def test_the_check_catches_a_metric_that_does_not_exist():
    assert "tandem_no_such_metric_total" not in exported_names()
    assert "tandem_goodput_tokens_per_forward_second" in exported_names()


def test_the_rendered_panels_compute_rates_between_scrapes():
    """bench/dashboard_render.py evaluates the panels' PromQL on scrapes: goodput is the committed
    tokens over the forward-pass seconds between two scrapes, not since start."""
    from bench.dashboard_render import series

    def m(tokens, seconds, drafted, accepted):
        return {("tandem_generated_tokens_total", (("rpc", "Speculate"),)): tokens,
                ("tandem_forward_pass_seconds_total", ()): seconds,
                ("tandem_spec_decode_num_draft_tokens_total", ()): drafted,
                ("tandem_spec_decode_num_accepted_tokens_total", ()): accepted,
                ("tandem_spec_decode_num_wasted_draft_tokens_total", ()): drafted - accepted}

    s = series([(0.0, m(0, 0.0, 0, 0)), (2.0, m(100, 1.0, 40, 30)), (4.0, m(120, 2.0, 80, 40))])
    assert [v for _, v in s["goodput"]] == [100.0, 20.0]
    assert [v for _, v in s["acceptance"]] == [0.75, 0.25]
    assert [v for _, v in s["wasted"]] == [5.0, 15.0]

"""Who chose each token: the run-length and total forms the stream and the page use."""

from edge.provenance import Source, runs, totals

A, C, L = Source.ACCEPTED, Source.CLOUD, Source.LOCAL


def test_runs_keep_order_and_merge_neighbours():
    assert runs([]) == []
    assert runs([C, A, A, A, C, A, C, C, L, L]) == [
        {"source": "cloud", "tokens": 1}, {"source": "accepted", "tokens": 3}, {"source": "cloud", "tokens": 1},
        {"source": "accepted", "tokens": 1}, {"source": "cloud", "tokens": 2}, {"source": "local", "tokens": 2}]


def test_totals_list_every_source():
    assert totals([]) == {"accepted": 0, "cloud": 0, "local": 0, "provisional": 0}
    sources = [C, A, A, L, C]
    assert totals(sources) == {"accepted": 2, "cloud": 2, "local": 1, "provisional": 0}
    assert sum(r["tokens"] for r in runs(sources)) == sum(totals(sources).values()) == len(sources)

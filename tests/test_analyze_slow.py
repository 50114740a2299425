"""`lapse analyze slow`: the planted cause of slow calls comes back as a readable rule."""

from __future__ import annotations

import json

import pytest

import lapse
from lapse import NotEnoughDataError, synthetic
from lapse.analysis.selection import Selection
from lapse.analysis.slo import Slo, parse_slo
from lapse.analysis.slowcalls import slow_calls
from tests.recording import lapse_cli

CAUSE = synthetic.SlowCause({"cache": "=miss", "rows": ">5000"}, factor=8.0, name="predict")
WORKLOAD = synthetic.Workload(
    events=16_000, runs=4, names=("predict", "other"), sigma=0.3, seed=3, rate_per_s=200,
    categories={"cache": {"hit": 0.0, "miss": 0.0}, "model": {"a": 0.0, "b": 1.0}},
    batch_sizes=(1, 8, 32), noise_attributes=("tenant",), slow_causes=(CAUSE,),
    callers=("app.api:predict_endpoint", "app.batch:score_all"), stack_slower_than_ms=40)
"""predict: ~5–13 ms, but 8x slower on a cache miss with more than 5,000 rows (about a
quarter of calls); slow calls carry a stack ending in the cache's frame."""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow") / "store"
    synthetic.write(folder, WORKLOAD)
    return folder


def test_the_planted_rule_is_recovered(store):
    """The top rule is 'cache = miss AND rows > ~5,000', right on held-out calls."""
    result = slow_calls(Selection(), store, event="predict", slo="40ms")
    top = result.rules[0]
    conditions = {c.feature: c for c in top.conditions}
    assert set(conditions) == {"attrs.cache", "attrs.rows"}
    assert (conditions["attrs.cache"].op, conditions["attrs.cache"].value) == ("=", "miss")
    assert conditions["attrs.rows"].op == ">"
    assert conditions["attrs.rows"].value == pytest.approx(5000, rel=0.03)
    assert top.precision >= 0.95
    assert top.recall >= 0.95
    assert top.support_fraction == pytest.approx(0.25, abs=0.03)
    assert result.precision >= 0.95
    assert result.recall >= 0.95
    assert str(top).startswith("attrs.cache = miss AND attrs.rows > 5,")


def test_exemplars_show_caller_stack_and_attributes(store):
    """Exemplars of the rule are its slowest calls, with the frame where time went."""
    result = slow_calls(Selection(), store, event="predict", slo="40ms", exemplars=2)
    first = [e for e in result.exemplars if e.rule == 0]
    assert len(first) == 2
    assert first[0].duration >= first[1].duration
    for example in first:
        assert example.caller in WORKLOAD.callers
        assert example.stack[-1] == CAUSE.frame
        assert example.attrs["cache"] == "miss"
        assert example.attrs["rows"] > 5000
    text = result.render("table")
    assert "IF attrs.cache = miss AND attrs.rows > 5," in text
    assert "load_from_disk" in text


def test_an_slo_every_call_meets_gives_no_rule(store):
    """With nothing slow there is nothing to learn, and the result says so."""
    result = slow_calls(Selection(), store, event="other", slo="10s")
    assert result.slow == 0
    assert result.rules == []
    assert any("need at least" in note or "needs at least" in note for note in result.notes)
    assert "No rule" in result.explain()


def test_cli_slow_json(store):
    """`lapse analyze slow --format json` carries rules with text, precision and recall."""
    run = lapse_cli("analyze", "slow", "--event", "predict", "--slo", "40ms", "--format",
                    "json", store=store)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["schema"] == "lapse.analyze.slow/1"
    assert document["rules"][0]["text"].startswith("attrs.cache = miss AND attrs.rows > 5,")
    assert document["exemplars"][0]["stack"]


def test_slo_strings():
    """SLOs parse as bare durations or percentile bounds; anything else names the forms."""
    assert parse_slo("100ms") == Slo(0.1)
    assert parse_slo("p99<200ms") == Slo(0.2, 99.0)
    assert parse_slo("p99.9 <= 1.5s") == Slo(1.5, 99.9)
    assert parse_slo(0.25) == Slo(0.25)
    assert parse_slo("200ms", default_percentile=99) == Slo(0.2, 99.0)
    for bad in ("fast", "p99>200ms", "p100<1s", "p99<", "0ms", "-5ms"):
        with pytest.raises(lapse.ConfigError, match=r"not an SLO|percentile"):
            parse_slo(bad)


def test_bad_input_is_explained(store, tmp_path):
    """A bad --slo, an unknown event and too few calls each get a clear message."""
    run = lapse_cli("analyze", "slow", "--event", "predict", "--slo", "quick", store=store)
    assert run.returncode == 2
    assert "not an SLO" in run.stderr
    assert "p99<200ms" in run.stderr
    with pytest.raises(lapse.ConfigError, match="Events there: other"):
        slow_calls(Selection(), store, event="nope", slo="40ms")
    with pytest.raises(NotEnoughDataError, match="at least 100 calls"):
        slow_calls(Selection(where=("attrs.rows<100",)), store, event="predict", slo="40ms")

"""`lapse compare`: the release gate's statistics, checked on data with known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lapse
from lapse import synthetic
from lapse.analysis.compare import (
    FASTER,
    NOT_ENOUGH,
    SLOWER,
    UNCHANGED,
    adjust,
    compare,
    compare_samples,
    parse_selector,
)
from tests.recording import lapse_cli


def _trials(factor: float, trials: int, n: int = 500, sigma: float = 0.3, seed: int = 11):
    rng = np.random.default_rng(seed)
    verdicts = []
    for _ in range(trials):
        base = 0.005 * rng.lognormal(0, sigma, n)
        cand = 0.005 * factor * rng.lognormal(0, sigma, n)
        verdicts.append(compare_samples({"e": (base, cand)}, resamples=200)[0].verdict)
    return verdicts


def test_no_change_rarely_raises_an_alarm():
    """200 A/A comparisons (same distribution): at most 5% are called slower or faster."""
    verdicts = _trials(1.0, 200)
    assert sum(v != UNCHANGED for v in verdicts) / 200 <= 0.05


def test_a_ten_percent_slowdown_is_caught():
    """A 10% slower median with 500 calls per side is flagged slower at least 95% of the time."""
    verdicts = _trials(1.10, 200)
    assert sum(v == SLOWER for v in verdicts) / 200 >= 0.95


def test_faster_and_not_enough_data():
    """A clear speed-up is called faster; too few calls on a side is said plainly."""
    rng = np.random.default_rng(3)
    base = rng.lognormal(0, 0.2, 400)
    result = compare_samples({"fast": (base, 0.7 * rng.lognormal(0, 0.2, 400)),
                              "rare": (base[:5], base[:5])})
    verdicts = {e.name: e.verdict for e in result}
    assert verdicts == {"fast": FASTER, "rare": NOT_ENOUGH}
    fast = next(e for e in result if e.name == "fast")
    assert fast.ratio_low < fast.ratio < fast.ratio_high < 0.8


def test_holm_and_bh_adjustments_match_textbook_values():
    """Holm's step-down and Benjamini-Hochberg give the published adjusted p-values."""
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 with running max
    assert adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: p * m / rank with running min from the top: 0.04, 0.04, 0.04, 0.02
    assert adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust(p, "none") == p


@pytest.fixture(scope="module")
def regressed_store(tmp_path_factory):
    """Two releases of four events; 'predict' is 20% slower in 1.1, the rest unchanged."""
    store = tmp_path_factory.mktemp("compare") / "store"
    synthetic.write(store, synthetic.Workload(
        events=16_000, runs=4, versions=("1.0", "1.1"), sigma=0.3, seed=5,
        slowdowns={("1.1", "predict"): 1.2}))
    return store


def test_compare_finds_the_planted_regression(regressed_store):
    """Between releases only the slowed event is slower; the gate exits 1 and says why."""
    result = compare(parse_selector("version=1.0"), parse_selector("version=1.1"),
                     baseline_dir=regressed_store)
    verdicts = {e.name: e.verdict for e in result.events}
    assert verdicts == {"predict": SLOWER, "preprocess": UNCHANGED,
                        "load_features": UNCHANGED, "postprocess": UNCHANGED}
    predict = next(e for e in result.events if e.name == "predict")
    assert predict.ratio == pytest.approx(1.2, abs=0.05)
    assert predict.ratio_low < predict.ratio < predict.ratio_high
    cli = lapse_cli("compare", "--baseline", "version=1.0", "--candidate", "version=1.1",
                    "--format", "json", store=regressed_store)
    assert cli.returncode == 1
    document = json.loads(cli.stdout)
    assert document["schema"] == "lapse.compare/1"
    assert document["regressed"] is True
    assert [e["name"] for e in document["events"] if e["verdict"] == SLOWER] == ["predict"]


def test_compare_from_python_is_a_result_like_the_other_analyses(regressed_store):
    """lapse.analyze.compare takes the command's selectors and gives the same verdicts as a
    table (Arrow, pandas), an HTML rendering for Jupyter and the command's JSON document."""
    result = lapse.analyze.compare("version=1.0", "version=1.1", regressed_store)
    assert result.regressed
    table = result.table
    assert table.num_rows == 4
    assert table.schema.field("baseline_calls").type == "int64"
    rows = {row["name"]: row for row in table.to_pylist()}
    assert rows["predict"]["verdict"] == SLOWER
    assert rows["predict"]["ratio"] == pytest.approx(1.2, abs=0.05)
    frame = result.to_pandas()
    assert frame.set_index("name").loc["predict", "verdict"] == SLOWER
    html = result._repr_html_()
    for shown in ("<table>", "predict", "Brunner-Munzel"):
        assert shown in html
    cli = lapse_cli("compare", "--baseline", "version=1.0", "--candidate", "version=1.1",
                    "--format", "json", store=regressed_store)
    assert json.loads(cli.stdout) == json.loads(json.dumps(result.to_dict()))
    with pytest.raises(lapse.ConfigError, match="selects nothing"):
        lapse.analyze.compare("", "version=1.1", regressed_store)


def test_same_release_passes_the_gate(regressed_store):
    """Two runs of the same release: nothing is flagged and the exit status is 0."""
    runs = lapse.sql("select run_id from runs where version = '1.0' order by run_id",
                     regressed_store).column("run_id").to_pylist()
    result = lapse_cli("compare", "--baseline", f"run_id={runs[0]}",
                       "--candidate", f"run_id={runs[1]}", "--format", "markdown",
                       store=regressed_store)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| event | verdict |" in result.stdout
    assert "Brunner-Munzel" in result.stdout


def test_compare_two_stores(regressed_store, tmp_path):
    """--baseline-dir and --candidate-dir compare two stores (e.g. two CI runs)."""
    other = tmp_path / "other"
    synthetic.write(other, synthetic.Workload(events=8_000, runs=2, versions=("1.0",),
                                              sigma=0.3, seed=9))
    result = lapse_cli("compare", "--baseline-dir", str(other),
                       "--candidate-dir", str(regressed_store), "--candidate", "version=1.1")
    assert result.returncode == 1
    assert "predict" in result.stdout


def test_bad_selector_explains_itself(regressed_store):
    """A selector that is not a condition or a range names the accepted forms."""
    with pytest.raises(lapse.ConfigError, match=r"2h\.\.1h"):
        parse_selector(" , ")
    result = lapse_cli("compare", "--baseline", "versoin=1.0", store=regressed_store)
    assert result.returncode == 2
    assert "not a column" in result.stderr


def test_compare_writes_an_html_page_and_keeps_the_exit_code(regressed_store, tmp_path):
    """`--format html -o FILE` writes a whole page with the verdict table; the command
    still exits 1 on a regression, so it can gate CI and leave the page as an artifact."""
    page = tmp_path / "compare.html"
    cli = lapse_cli("compare", "--baseline", "version=1.0", "--candidate", "version=1.1",
                    "--format", "html", "-o", str(page), store=regressed_store)
    assert cli.returncode == 1, cli.stderr
    text = page.read_text()
    assert text.startswith("<!doctype html>")
    assert "version=1.1 against version=1.0" in text
    assert "<td style='text-align:left'>slower</td>" in text

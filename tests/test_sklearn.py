"""``lapse.instrument("sklearn")`` on real estimators and a Pipeline, and undoing it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import lapse

sklearn = pytest.importorskip("sklearn")

from sklearn.base import BaseEstimator, ClassifierMixin  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture
def instrumented() -> Iterator[None]:
    """scikit-learn instrumented for one test, and restored after it whatever happens."""
    lapse.instrument("sklearn")
    try:
        yield
    finally:
        lapse.uninstrument("sklearn")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """The breast-cancer data shipped with scikit-learn, standardised (so lbfgs converges)."""
    features, labels = load_breast_cancer(return_X_y=True)
    return (features - features.mean(axis=0)) / features.std(axis=0), labels


def events() -> list[dict]:
    lapse.flush()
    return lapse.sql("select name, span_id, parent_id, trace_id, attrs, caller, status, "
                     "error_type from events order by start_ns").to_pylist()


def test_estimator_methods_become_events_with_rows_and_features(store, instrumented, data):
    """fit, predict, predict_proba and score of a real estimator are each an event with the
    shape of X, called from the test (the caller is the user's code, not lapse's wrapper)."""
    features, labels = data
    model = LogisticRegression(max_iter=500)
    model.fit(features, labels)
    model.predict(features[:10])
    model.predict_proba(features[:7])
    model.score(features[:20], labels[:20])
    rows = events()
    top = [row for row in rows if row["parent_id"] is None]
    assert [row["name"] for row in top] == [
        "sklearn.LogisticRegression.fit", "sklearn.LogisticRegression.predict",
        "sklearn.LogisticRegression.predict_proba", "sklearn.LogisticRegression.score"]
    # scikit-learn's own estimators used inside (LabelEncoder in fit) nest under the call
    assert {row["name"] for row in rows if row["parent_id"] is not None} >= {
        "sklearn.LabelEncoder.fit", "sklearn.LogisticRegression.predict"}
    import json

    attrs = {row["name"]: json.loads(row["attrs"]) for row in rows if row["parent_id"] is None}
    assert attrs["sklearn.LogisticRegression.fit"]["rows"] == 569
    assert attrs["sklearn.LogisticRegression.fit"]["features"] == 30
    assert attrs["sklearn.LogisticRegression.predict"]["rows"] == 10
    assert attrs["sklearn.LogisticRegression.predict_proba"]["rows"] == 7
    assert attrs["sklearn.LogisticRegression.fit"]["estimator"] == (
        "sklearn.linear_model._logistic.LogisticRegression")
    assert {row["caller"] for row in top} == {
        "tests.test_sklearn:test_estimator_methods_become_events_with_rows_and_features"}
    # score() calls predict(): nested under it
    score = next(r for r in rows if r["name"] == "sklearn.LogisticRegression.score")
    inner = [r for r in rows if r["parent_id"] == score["span_id"]]
    assert [r["name"] for r in inner] == ["sklearn.LogisticRegression.predict"]


def test_pipeline_steps_nest_under_the_pipeline(store, instrumented, data):
    """A Pipeline's fit and predict are events, and each step's work nests under them."""
    features, labels = data
    pipe = Pipeline([("scale", StandardScaler()), ("pca", PCA(5)),
                     ("model", LogisticRegression(max_iter=500))])
    pipe.fit(features, labels)
    probabilities = pipe.predict_proba(features[:50])
    assert probabilities.shape == (50, 2)
    assert hasattr(pipe, "predict_proba")  # available_if still answers
    rows = events()
    by_id = {row["span_id"]: row for row in rows}

    def children(row: dict) -> list[str]:
        return [r["name"] for r in rows if r["parent_id"] == row["span_id"]]

    fit = next(r for r in rows if r["name"] == "sklearn.Pipeline.fit")
    assert fit["parent_id"] is None
    assert children(fit) == ["sklearn.StandardScaler.fit_transform",
                             "sklearn.PCA.fit_transform", "sklearn.LogisticRegression.fit"]
    proba = next(r for r in rows if r["name"] == "sklearn.Pipeline.predict_proba")
    assert children(proba) == ["sklearn.StandardScaler.transform", "sklearn.PCA.transform",
                               "sklearn.LogisticRegression.predict_proba"]
    assert all(r["trace_id"] == fit["trace_id"] for r in rows
               if _root(r, by_id)["span_id"] == fit["span_id"])
    import json

    assert json.loads(proba["attrs"])["rows"] == 50
    model_fit = next(r for r in rows if r["name"] == "sklearn.LogisticRegression.fit")
    assert json.loads(model_fit["attrs"])["features"] == 5  # after PCA


def _root(row: dict, by_id: dict) -> dict:
    while row["parent_id"] is not None:
        row = by_id[row["parent_id"]]
    return row


def test_errors_are_recorded_and_raised_unchanged(store, instrumented):
    """A method that raises is an error event, and the caller gets scikit-learn's exception."""
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LogisticRegression().predict(np.zeros((3, 2)))
    (row,) = [row for row in events() if row["parent_id"] is None]
    assert row["name"] == "sklearn.LogisticRegression.predict"
    assert row["status"] == "error"
    assert row["error_type"] == "sklearn.exceptions.NotFittedError"


class Custom(ClassifierMixin, BaseEstimator):
    """A user's own estimator whose fit calls its base class's fit."""

    def fit(self, data, labels):
        self.classes_ = np.unique(labels)
        return self

    def predict(self, data):
        return np.zeros(len(data), dtype=int)


class CustomChild(Custom):
    def fit(self, data, labels):
        return super().fit(data, labels)


def test_user_estimators_and_super_calls_are_one_event(store, instrumented):
    """An estimator subclass calling super().fit() records one fit, not two."""
    CustomChild().fit(np.zeros((4, 3)), [0, 1, 0, 1])
    assert [row["name"] for row in events()] == ["sklearn.CustomChild.fit"]


def test_uninstrument_restores_every_method(store, data):
    """After uninstrument the classes hold their original functions and nothing is recorded."""
    before = {name: LogisticRegression.__dict__[name] for name in ("fit", "predict_proba")}
    pipeline_proba = Pipeline.__dict__["predict_proba"]
    wrapped = lapse.instrument("sklearn")
    assert wrapped > 100
    assert lapse.instrument("sklearn") == 0  # once
    assert LogisticRegression.__dict__["fit"] is not before["fit"]
    assert lapse.uninstrument("sklearn") == wrapped
    assert {name: LogisticRegression.__dict__[name] for name in before} == before
    assert Pipeline.__dict__["predict_proba"] is pipeline_proba
    features, labels = data
    LogisticRegression(max_iter=500).fit(features, labels)
    lapse.flush()
    assert not (store / "events").exists() or lapse.sql(
        "select count(*) as n from events").to_pylist() == [{"n": 0}]


def test_unknown_library_is_a_config_error():
    """instrument() names the libraries it knows."""
    with pytest.raises(lapse.ConfigError, match="sklearn"):
        lapse.instrument("tensorflow-but-misspelt")

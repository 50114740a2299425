"""Analyses on a distributed engine: the report's and compare's queries, written once in Ibis.

DuckDB stays the default engine (``lapse.analysis.summary``: one scan, then
NumPy selection). For stores that outgrow one machine, ``--engine spark`` runs
the same analyses on Spark over the same Parquet segments. Collecting every
duration to the driver does not scale there, so the order statistics are
computed in the engine: a window numbers each group's durations in order
(``row_number``), ``n`` is known per group, and only the few ranks that R's
``fivenum`` and the type-7 percentiles need come back (a band of four around
each percentile position, so floating-point rounding in the engine cannot
pick the wrong one); the interpolation is then done in Python with the very
arithmetic of ``lapse.analysis.fivenum``. Hence five-number summaries,
percentiles and outlier counts equal DuckDB's exactly; totals and means are
summed as integers here and as doubles by DuckDB, so they agree to about 1e-12.

The queries are Ibis expressions, so the same code runs on every backend Ibis
drives: tests run it on DuckDB too (``engine="ibis-duckdb"``) and compare.
The only dialect difference is the JSON function behind ``attrs.KEY``.
``lapse compare``'s engine side is in ``lapse.analysis.engine_compare``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from lapse._errors import ConfigError
from lapse.analysis.fivenum import PERCENTILES, OrderSummary
from lapse.analysis.selection import (
    _ATTR,
    _CONDITION,
    _NUMERIC,
    Selection,
    _condition,
    _number,
    column_sql,
)
from lapse.store._read import RUN_COLUMNS_IN_EVENTS, parse_time_ns

Expr = Any
"""An Ibis expression or table (Ibis ships no type information for mypy)."""

ENGINES = ("duckdb", "spark")
"""Engines the report and compare commands take (``--engine``); duckdb is the default."""

_BACKENDS = ("spark", "ibis-duckdb")
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):/+")


def check_engine(engine: str) -> str:
    """The engine name, or a ConfigError naming the ones there are."""
    if engine not in ENGINES and engine not in _BACKENDS:
        raise ConfigError(f"engine: {engine!r} is not valid; expected one of "
                          f"{', '.join(ENGINES)}.")
    return engine


def store_location(folder: str | os.PathLike[str]) -> str:
    """The store as Spark reads it: a local path, or a URI (``s3a://bucket/lapse``) kept whole.

    ``Path("s3a://b/x")`` collapses the double slash; it is put back here.
    """
    text = os.fspath(folder)
    match = _URI.match(text)
    if match:
        scheme = match.group(1)
        rest = text[match.end():]
        return f"{scheme}:///{rest}" if scheme.lower() == "file" else f"{scheme}://{rest}"
    return text


# -- the engine's tables ------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """Ibis 12 calls DuckDB's renamed ``fetch_arrow_table``: that deprecation is Ibis's to
    fix and says nothing to a lapse user, so it is not shown."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "fetch_arrow_table", DeprecationWarning)
        yield


def execute(source: Source, expression: Expr) -> Any:
    """Run an Ibis table expression; its result as a pyarrow Table.

    On Spark the expression is compiled to Spark SQL and fetched with
    ``DataFrame.toArrow()`` (Ibis's own path goes through pandas).
    """
    if source.backend == "spark":
        import ibis

        session = spark_session()
        return session.sql(ibis.to_sql(expression, dialect="pyspark")).toArrow()
    with _quiet():
        return expression.to_pyarrow()


@dataclass
class Source:
    """An Ibis connection with the store's events (and runs) as tables."""

    backend: str
    con: Any
    events: Expr
    runs: Expr

    def json_string(self, column: Expr, key: str) -> Expr:
        """The text of ``attrs``' key ``key``, as DuckDB's json_extract_string gives it."""
        if self.backend == "spark":
            return _get_json_object(column, f"$['{key}']")
        return _json_extract_string(column, f'$."{key}"')


def _builtins() -> None:
    """Declare the two backends' JSON functions as Ibis builtins (once, when Ibis is loaded)."""
    global _json_extract_string, _get_json_object
    import ibis

    @ibis.udf.scalar.builtin(name="json_extract_string")  # type: ignore[untyped-decorator]
    def json_extract_string(doc: str, path: str) -> str:
        """DuckDB's JSON text extraction (only the signature is used)."""
        raise NotImplementedError

    @ibis.udf.scalar.builtin(name="get_json_object")  # type: ignore[untyped-decorator]
    def get_json_object(doc: str, path: str) -> str:
        """Spark's JSON text extraction (only the signature is used)."""
        raise NotImplementedError

    _json_extract_string, _get_json_object = json_extract_string, get_json_object


_json_extract_string: Any = None
_get_json_object: Any = None


def spark_session() -> Any:
    """The active Spark session, else a new one from Spark's own configuration.

    With no master configured anywhere (``PYSPARK_SUBMIT_ARGS``, ``MASTER``,
    ``spark-defaults.conf``), Spark runs in local mode, kept on the loopback
    interface with its web UI off.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName("lapse").config(
        "spark.ui.showConsoleProgress", "false")
    if not _master_configured():
        builder = (builder.master("local[*]")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.ui.enabled", "false"))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def _master_configured() -> bool:
    if "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "") or os.environ.get("MASTER"):
        return True
    folders = [os.environ.get("SPARK_CONF_DIR")]
    if os.environ.get("SPARK_HOME"):
        folders.append(str(Path(os.environ["SPARK_HOME"]) / "conf"))
    for folder in folders:
        if folder:
            defaults = Path(folder) / "spark-defaults.conf"
            if defaults.is_file() and re.search(r"^\s*spark\.master\s", defaults.read_text(),
                                                re.MULTILINE):
                return True
    return False


def open_source(engine: str, folder: str | os.PathLike[str] | None, *,
                with_runs: bool, con: Any = None) -> Source:
    """The store's events (joined with their runs' columns if ``with_runs``) on ``engine``.

    ``con`` reuses the Ibis connection of another Source (to combine two stores).
    """
    import ibis

    from lapse.store import _layout
    from lapse.store._read import readable_files, resolve_dir
    from lapse.store._schema import event_schema, run_schema

    if _json_extract_string is None:
        _builtins()
    location = store_location(folder) if folder is not None else str(resolve_dir(None))
    if engine != "spark" and location.startswith("file://"):
        location = location.removeprefix("file://")
    remote = _URI.match(location) is not None
    if not remote:
        from lapse.store._read import _flush_own_events

        root = Path(location)
        _flush_own_events(root)
        if not root.is_dir():
            from lapse._errors import StoreError

            raise StoreError(f"no lapse store at {root}: run an instrumented program first, "
                             "or pass --dir / dir= (or set LAPSE_DIR) to the store directory.")
        event_files = [str(p) for p in readable_files(_layout.segment_files(root))]
        run_files = [str(p) for p in readable_files(_layout.run_files(root))]
    backend = "spark" if engine == "spark" else "ibis-duckdb"
    if backend == "spark":
        session = spark_session()
        con = con if con is not None else ibis.pyspark.connect(session)
        sources = ((f"{location}/events", None if remote else event_files, event_schema()),
                   (f"{location}/runs", None if remote else run_files, run_schema()))
        tables = [_spark_table(session, con, where, files, schema)
                  for where, files, schema in sources]
    else:
        if con is None:
            con = ibis.duckdb.connect()
            con.raw_sql("SET autoinstall_known_extensions=false")
            con.raw_sql("SET autoload_known_extensions=false")
        if remote:
            raise ConfigError(f"dir: {location!r} is a URI; read remote stores with "
                              "--engine spark.")  # (file:// URIs are local paths to DuckDB)
        with _quiet():
            tables = [_conform(con.read_parquet(files, union_by_name=True), schema) if files
                      else con.create_table(f"lapse_{uuid.uuid4().hex}",
                                            schema.empty_table(), temp=True)
                      for files, schema in ((event_files, event_schema()),
                                            (run_files, run_schema()))]
    events, runs = tables
    if with_runs:
        extra = runs.select("run_id", *RUN_COLUMNS_IN_EVENTS).rename(run_key="run_id")
        events = events.left_join(extra, events.run_id == extra.run_key).drop("run_key")
    return Source(backend, con, events, runs)


def _spark_table(session: Any, con: Any, location: str, files: list[str] | None,
                 schema: Any) -> Expr:
    """A Spark DataFrame of the segments as an Ibis table, with every schema column."""
    from pyspark.sql.types import StructType

    name = f"lapse_{uuid.uuid4().hex}"
    reader = session.read.option("mergeSchema", "true")
    if files is None:  # a URI: Spark lists it (hidden .tmp files are skipped)
        frame = reader.option("pathGlobFilter", "*.parquet").parquet(location)
    elif files:
        frame = reader.parquet(*files)
    else:
        frame = session.createDataFrame([], StructType([]))
    frame.createOrReplaceTempView(name)
    return _conform(con.table(name), schema)


def _conform(table: Expr, schema: Any) -> Expr:
    """Columns of an older schema version (or of an empty store) are added as nulls."""
    import ibis

    types = {"string": "string", "int64": "int64"}
    missing = {field.name: ibis.null().cast(types.get(str(field.type), "array<string>"))
               for field in schema if field.name not in table.columns}
    return table.mutate(**missing) if missing else table


# -- the selection, as Ibis expressions ------------------------------------------------


def _like(column: Expr, pattern: str) -> Expr:
    """``*`` as anything (the name and run filters of ``--name``, ``--run``)."""
    regex = "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"
    return column.re_search(regex)


def _glob(column: Expr, pattern: str) -> Expr:
    """DuckDB's GLOB (``*``, ``?``, ``[...]``) as a regular expression both engines run."""
    out, i = ["^"], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    out.append("$")
    return column.re_search("".join(out))


def term_expr(source: Source, table: Expr, term: str) -> Expr:
    """A column or ``attrs.KEY`` named by a user (checked as ``Selection`` checks it)."""
    column_sql(term)  # the same ConfigError, in the user's words
    match = _ATTR.match(term)
    if match:
        return source.json_string(table.attrs, match.group(1))
    return table[term]


def filters(source: Source, table: Expr, selection: Selection) -> list[Expr]:
    """The selection's conditions (the same as ``Selection.where_sql``) as Ibis predicates."""
    predicates: list[Expr] = []
    if selection.since is not None:
        predicates.append(table.start_ns >= parse_time_ns(selection.since, "since"))
    if selection.until is not None:
        predicates.append(table.start_ns < parse_time_ns(selection.until, "until"))
    for column, values in (("name", selection.name), ("run_id", selection.run)):
        if values is None:
            continue
        items = [values] if isinstance(values, str) else list(values)
        parts = [_like(table[column], item) if "*" in item else table[column] == item
                 for item in items]
        combined = parts[0]
        for part in parts[1:]:
            combined = combined | part
        predicates.append(combined)
    for column, value in (("service", selection.service), ("version", selection.version)):
        if value is not None:
            predicates.append(table[column] == value)
    for text in selection.where:
        _condition(text)  # validates, with the same messages
        match = _CONDITION.match(text)
        assert match is not None
        term, operator, value = match.groups()
        target = term_expr(source, table, term)
        if operator == "~":
            predicates.append(_glob(target, value))
            continue
        number = _number(value)
        compared: Any = value
        if (term in _NUMERIC or term.startswith("attrs.")) and number is not None:
            compared = number
            if term not in _NUMERIC:
                target = target.try_cast("float64")
        elif term in _NUMERIC:
            target = target.cast("string")
        predicates.append(_compare(target, operator, compared))
    return predicates


def _compare(target: Any, operator: str, value: Any) -> Expr:
    operations = {"=": target.__eq__, "!=": target.__ne__, ">": target.__gt__,
                  ">=": target.__ge__, "<": target.__lt__, "<=": target.__le__}
    result: Expr = operations[operator](value)
    return result


def uses_runs(selection: Selection) -> bool:
    """Whether a selection needs the run columns (service, version, host...) joined in."""
    terms = [*selection.by, *(m.group(1) for m in map(_CONDITION.match, selection.where) if m)]
    return (selection.service is not None or selection.version is not None
            or any(term in RUN_COLUMNS_IN_EVENTS for term in terms))


# -- order statistics in the engine ------------------------------------------------------


_FRACTIONS = [Fraction(str(p)) / 100 for p in PERCENTILES]


def _five_ranks(n: Any) -> list[Any]:
    """0-based ranks around R's fivenum positions, in integer arithmetic (exact everywhere).

    With ``k = (n + 3) // 2`` the positions are 0, k/2 - 1, (n - 1)/2, n - k/2, n - 1.
    """
    k = (n + 3) // 2
    return [n * 0, k // 2 - 1, (k + 1) // 2 - 1, (n - 1) // 2, n // 2, n - (k + 1) // 2,
            n - k // 2, n - 1]


def _percentile_ranks(n: Any) -> list[Any]:
    """A band of four ranks around each type-7 percentile position ``(n - 1) p``.

    The engine computes ``floor((n - 1) p)`` exactly with integers; Python's
    float position may round across an integer, so one rank below and two
    above are fetched as well.
    """
    ranks = []
    for fraction in _FRACTIONS:
        base = ((n - 1) * fraction.numerator) // fraction.denominator
        ranks += [base - 1, base, base + 1, base + 2]
    return ranks


def ranked(table: Expr, keys: list[str]) -> Expr:
    """Each row's 0-based rank ``rn`` in its group, by duration, and its group's size ``n``."""
    import ibis

    part = ibis.window(group_by=keys)
    ordered = ibis.window(group_by=keys, order_by=table.duration_ns)
    return table.mutate(rn=ibis.row_number().over(ordered), n=table.count().over(part),
                        d=table.duration_ns.cast("float64"))


def _value_at(table: Expr, rank: Any, keys: list[str]) -> Any:
    import ibis

    return ibis.ifelse(table.rn == rank, table.d, ibis.null()).max().over(
        ibis.window(group_by=keys))


def order_statistics_query(table: Expr, keys: list[str]) -> Expr:
    """Per group: n, errors, total, first start, last end, Tukey outliers and the needed ranks.

    One scan with windows; ``stats`` holds ``{rn, duration_ns}`` for the ranks
    fivenum and the percentiles need (a few dozen per group at most).
    """
    import ibis

    r = ranked(table, keys)
    five = _five_ranks(r.n)
    lower = (_value_at(r, five[1], keys) + _value_at(r, five[2], keys)) * 0.5
    upper = (_value_at(r, five[5], keys) + _value_at(r, five[6], keys)) * 0.5
    r = r.mutate(lower=lower, upper=upper)
    spread = r.upper - r.lower
    outside = (r.d < r.lower - spread * 1.5) | (r.d > r.upper + spread * 1.5)
    wanted = [*five, *_percentile_ranks(r.n)]
    keep = r.rn == wanted[0]
    for rank in wanted[1:]:
        keep = keep | (r.rn == rank)
    return r.group_by(keys).aggregate(
        n=r.n.max(),
        errors=r.count(where=r.status == "error"),
        total_ns=r.duration_ns.sum(),
        first_ns=r.start_ns.min(),
        last_ns=(r.start_ns + r.duration_ns).max(),
        outliers=r.count(where=outside),
        stats=ibis.struct({"rn": r.rn, "duration_ns": r.duration_ns}).collect(where=keep),
    )


def summary_from_ranks(n: int, values: dict[int, float], outliers: int) -> OrderSummary:
    """The OrderSummary ``fivenum.summarize`` gives, from the order statistics at some ranks.

    The same float arithmetic as ``summarize``, so the numbers are identical.
    """
    import numpy as np

    def x(rank: int) -> float:
        return float(np.float64(values[rank]))

    h = ((n + 3) // 2) / 2
    five_at = [0.0, h - 1, (n - 1) / 2, n - h, float(n - 1)]
    five = [0.5 * (x(int(np.floor(p))) + x(int(np.ceil(p)))) for p in five_at]
    pct_at = [(n - 1) * p / 100 for p in PERCENTILES]

    def at(position: float) -> float:
        low = int(np.floor(position))
        high = min(int(np.ceil(position)), n - 1)
        data_low, data_high = np.float64(x(low)), np.float64(x(high))
        return float(data_low + (position - low) * (data_high - data_low))

    return OrderSummary(n, five[0], five[1], five[2], five[3], five[4],
                        tuple(at(p) for p in pct_at), outliers)


def summary_groups(selection: Selection, folder: str | os.PathLike[str] | None,
                   engine: str) -> tuple[list[dict[str, Any]], int]:
    """The rows ``summary`` needs per group (with an OrderSummary each) and the dropped count."""
    source = open_source(engine, folder, with_runs=uses_runs(selection))
    table = source.events
    predicates = filters(source, table, selection)
    if predicates:
        table = table.filter(predicates)
    labels = list(selection.by)
    table = table.mutate(**{f"g{i}": term_expr(source, table, term)
                            for i, term in enumerate(labels)})
    keys = ["name", *(f"g{i}" for i in range(len(labels)))]
    result = execute(source, order_statistics_query(table, keys)).to_pylist()
    groups = []
    for row in result:
        n = int(row["n"])
        values = {int(item["rn"]): float(item["duration_ns"]) for item in row["stats"]}
        group = {"name": row["name"], "n": n, "errors": int(row["errors"]),
                 "total_ns": float(row["total_ns"]), "first_ns": row["first_ns"],
                 "last_ns": row["last_ns"], "stats": summary_from_ranks(
                     n, values, int(row["outliers"]))}
        group.update({label: row[f"g{i}"] for i, label in enumerate(labels)})
        groups.append(group)
    selected = table.select("run_id").distinct()
    runs = source.runs
    dropped = runs.filter(runs.run_id.isin(selected.run_id)).aggregate(
        dropped=runs.dropped.sum())
    return groups, int(execute(source, dropped).column(0)[0].as_py() or 0)


"""What lapse costs: per-call overhead, lost events, writer throughput, memory, import time.

Run from the repository root::

    .venv/bin/python benchmarks/overhead.py            # full run, a few minutes
    .venv/bin/python benchmarks/overhead.py --quick    # about a minute, rougher figures
    .venv/bin/python benchmarks/overhead.py --json results.json

Sections (see benchmarks/README.md for the method and the latest figures):

1. ``overhead``: added ns per call of ``def f(x): return x`` under each lapse
   level and under the alternatives (a pure-Python floor, ``logging`` to a file,
   prometheus_client, an OpenTelemetry SDK span). All variants run in one
   process, interleaved in a shuffled order every round; figures are medians.
2. ``loss``: 8 threads x 100,000 calls with lapse's default buffer and flush
   interval writing a real store, then the same with OpenTelemetry's default
   BatchSpanProcessor; how many events arrive.
3. ``writer``: events/s the writer encodes and writes (``lapse.flush()`` of a
   prefilled buffer of 1,000,000 events).
4. ``memory``: bytes per buffered event, in a fresh subprocess per measurement.
5. ``import``: ``import lapse`` time in fresh subprocesses, beside OpenTelemetry
   and prometheus_client.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import logging
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

perf_counter_ns = time.perf_counter_ns

SECTIONS = ("overhead", "loss", "writer", "memory", "import")
LEVELS = ("off", "minimal", "standard", "debug")

FULL = {
    "rounds": 25,  # interleaved rounds of the overhead section
    "block_s": 0.08,  # wall time of one timed block of calls
    "loss_threads": 8,
    "loss_calls": 100_000,  # per thread
    "writer_events": 1_000_000,
    "writer_reps": 3,
    "memory_events": 1_000_000,
    "memory_reps": 3,
    "import_reps": 15,
    "decorate_reps": 3,  # fresh processes timing lapse.timed itself
}
QUICK = {
    **FULL,
    "rounds": 15,
    "block_s": 0.04,
    "writer_reps": 1,
    "memory_reps": 1,
    "import_reps": 7,
    "decorate_reps": 1,
}

INFORMATION = {
    # lapse's wrapper takes the function's own parameters; so does this floor.
    "minimal_over_floor_own": "minimal / floor declared (x) (added ns)",
    "standard_over_floor_own": "standard / floor declared (x) (added ns)",
}
"""Ratios shown beside the targets, with no target of their own."""

TARGETS = {
    "minimal_over_floor": ("minimal / floor (added ns)", "<=", 1.5),
    "standard_over_floor": ("standard / floor (added ns)", "<=", 3.0),
    "otel_over_minimal": ("OpenTelemetry / minimal (added ns)", ">=", 50.0),
    # The two run the same instructions, so "no dearer" is tested, not read off a ratio that
    # noise puts either side of 1.0: met when the ratio is at most 1.0, or when debug was not
    # dearer in significantly more rounds than not (one-sided sign test, p >= 0.05).
    "debug_slow_over_standard": ("debug slow=1s / standard (added ns)", "<= or not dearer", 1.0),
    "loss_lapse_rows": ("lapse rows stored of 800,000 (8 threads)", "==", 800_000),
    "writer_minimal": ("writer throughput, minimal (events/s)", ">=", 1_000_000),
    "writer_standard": ("writer throughput, standard (events/s)", ">=", 1_000_000),
    "memory_minimal": ("memory per buffered event, minimal (bytes, RSS, ~1 µs fn)", "<=", 200),
    "memory_standard": ("memory per buffered event, standard (bytes, RSS, ~1 µs fn)", "<=", 200),
    "import_lapse": ("import lapse (ms, wall, minus bare python)", "<", 50),
}


def f(x):
    """The function being measured: as cheap as a Python function gets."""
    return x


def g(x):
    """A function that takes about a microsecond (for memory: see ``memory_child``)."""
    for _ in range(25):
        pass
    return x


MEMORY_FUNCTIONS = {"f": f, "g": g}


# -- helpers -------------------------------------------------------------------


def median(values):
    return statistics.median(values)


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def time_calls(fn, n):
    """Mean ns per call of ``fn(1)`` over ``n`` calls (the loop is the same for every variant)."""
    calls = itertools.repeat(None, n)
    t0 = perf_counter_ns()
    for _ in calls:
        fn(1)
    return (perf_counter_ns() - t0) / n


def calibrate(fn, block_s, reset):
    """The number of calls that takes about ``block_s`` seconds."""
    n = 200
    while True:
        per_call = time_calls(fn, n)
        reset()
        if per_call * n > 0.02e9 or n >= 1 << 24:
            return max(1000, min(5_000_000, round(block_s * 1e9 / per_call)))
        n *= 4


def sign_test_p(successes, n):
    """One-sided sign test: the chance of ``successes`` or more heads in ``n`` fair coin tosses."""
    return sum(math.comb(n, k) for k in range(successes, n + 1)) / 2**n


def clear_lapse_environment():
    """Defaults mean defaults: ignore any LAPSE_* variables of the calling shell."""
    for name in list(os.environ):
        if name.startswith("LAPSE_"):
            del os.environ[name]


def settle_writer(timeout=60.0):
    """Wait until lapse's writer thread has done its start-up work, then flush.

    The writer imports pyarrow and gathers the run's facts when it starts; that
    must not overlap a measurement.
    """
    import lapse
    from lapse._recorder import RECORDER

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = RECORDER.run
        if run is not None and run.resource and not RECORDER._run_dirty:
            break
        time.sleep(0.02)
    lapse.flush()


def rss_bytes():
    with Path("/proc/self/statm").open() as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def package_version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_state():
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True,
            text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+uncommitted changes in src" if dirty else "")


# -- the alternatives, as decorators -----------------------------------------------


def floor_decorator(sink):
    """The least any Python timing decorator can do: two clock reads and one append."""

    def decorate(fn):
        clock = perf_counter_ns
        append = sink.append

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                append((t0, clock() - t0))

        return wrapper

    return decorate


def floor_own_parameters_decorator(sink):
    """The floor declared with the function's one parameter, as lapse declares its wrapper:
    the call builds no ``args`` tuple or ``kwargs`` dict (the difference between the two floors
    is what a generic wrapper costs)."""

    def decorate(fn):
        clock = perf_counter_ns
        append = sink.append

        @functools.wraps(fn)
        def wrapper(x):
            t0 = clock()
            try:
                return fn(x)
            finally:
                append((t0, clock() - t0))

        return wrapper

    return decorate


def logging_decorator(logger):
    """Log each call's duration (what many teams do before they adopt a tool)."""

    def decorate(fn):
        name = fn.__qualname__

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                logger.info("%s took %d ns", name, perf_counter_ns() - t0)

        return wrapper

    return decorate


def file_logger(path):
    logger = logging.getLogger("bench.calls")
    logger.handlers.clear()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


def otel_setup(**processor_options):
    """A TracerProvider with a BatchSpanProcessor and an exporter that counts and discards."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DiscardingExporter(SpanExporter):
        def __init__(self):
            self.exported = 0

        def export(self, spans):
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self):
            pass

    exporter = DiscardingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, **processor_options))
    return provider, exporter


def otel_decorator(tracer):
    def decorate(fn):
        name = fn.__qualname__

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with tracer.start_as_current_span(name):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def quiet_otel_logging():
    """OpenTelemetry logs one warning per dropped span; keep them off the terminal.

    The records are still created and handled (by a NullHandler), so the cost
    of the warning stays in the measurement; only the terminal I/O goes.
    """
    logger = logging.getLogger("opentelemetry")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False


# -- 1. per-call overhead ----------------------------------------------------------


def bench_overhead(cfg, workdir):
    import prometheus_client

    import lapse
    from lapse._recorder import RECORDER

    store = workdir / "overhead-store"
    lapse.configure(dir=store, level="standard", flush_interval="1h", buffer_size=20_000_000)

    floor_sink = []
    logger, handler = file_logger(workdir / "calls.log")
    histogram = prometheus_client.Histogram(
        "f_seconds", "Duration of f", registry=prometheus_client.CollectorRegistry()
    )
    provider, _ = otel_setup()
    tracer = provider.get_tracer("benchmarks.overhead")

    variants = {"bare": f}
    for level in LEVELS:
        variants[level] = lapse.timed(f"f_{level}", level=level)(f)
    variants["debug_slow"] = lapse.timed("f_debug_slow", level="debug", slow="1s")(f)
    variants["floor"] = floor_decorator(floor_sink)(f)
    variants["floor_own"] = floor_own_parameters_decorator(floor_sink)(f)
    variants["logging"] = logging_decorator(logger)(f)
    variants["prometheus"] = histogram.time()(f)
    variants["otel"] = otel_decorator(tracer)(f)

    def reset():
        RECORDER.buffer.clear()
        floor_sink.clear()
        provider.force_flush()

    variants["minimal"](1)  # starts lapse's writer
    settle_writer()
    reset()

    sizes = {name: calibrate(fn, cfg["block_s"], reset) for name, fn in variants.items()}
    samples = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(20261203).shuffle
    for _ in range(cfg["rounds"]):
        shuffle(order)
        for name in order:
            gc.collect()
            samples[name].append(time_calls(variants[name], sizes[name]))
            reset()

    dropped = sum(lapse.status()["dropped"].values())
    handler.close()
    provider.shutdown()
    lapse.reset()

    bare = median(samples["bare"])
    # A round's "added" figure subtracts the same round's bare figure, so ratios
    # can also be taken round by round (their quartiles show how noisy they are).
    added_by_round = {
        name: [t - b for t, b in zip(times, samples["bare"], strict=True)]
        for name, times in samples.items()
    }
    rows = {}
    for name, times in samples.items():
        total = median(times)
        low, high = quartiles(times)
        rows[name] = {
            "ns_per_call": total,
            "ns_per_call_q1": low,
            "ns_per_call_q3": high,
            "added_ns": total - bare,
            "x_bare": total / bare,
            "calls_per_block": sizes[name],
        }
    floor_added = rows["floor"]["added_ns"]
    for row in rows.values():
        row["x_floor"] = row["added_ns"] / floor_added

    def ratio(top, bottom):
        per_round = [
            a / b for a, b in zip(added_by_round[top], added_by_round[bottom], strict=True)
        ]
        q1, q3 = quartiles(per_round)
        dearer = sum(r > 1 for r in per_round)
        return {
            "value": rows[top]["added_ns"] / rows[bottom]["added_ns"],
            "per_round_median": median(per_round),
            "per_round_q1": q1,
            "per_round_q3": q3,
            "rounds_dearer": dearer,
            "p_dearer": sign_test_p(dearer, len(per_round)),
        }

    ratios = {
        "minimal_over_floor": ratio("minimal", "floor"),
        "standard_over_floor": ratio("standard", "floor"),
        "otel_over_minimal": ratio("otel", "minimal"),
        "debug_slow_over_standard": ratio("debug_slow", "standard"),
        "minimal_over_floor_own": ratio("minimal", "floor_own"),
        "standard_over_floor_own": ratio("standard", "floor_own"),
    }
    return {
        "rounds": cfg["rounds"],
        "variants": rows,
        "ratios": ratios,
        "lapse_dropped": dropped,
    }


# -- 2. lost events under load --------------------------------------------------------


def run_threads(count, target):
    """Run ``target`` on ``count`` threads started together; the wall time in seconds."""
    barrier = threading.Barrier(count + 1)

    def body():
        barrier.wait()
        target()

    threads = [threading.Thread(target=body) for _ in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - t0


def bench_loss(cfg, workdir):
    import lapse
    from lapse._recorder import RECORDER

    threads, calls = cfg["loss_threads"], cfg["loss_calls"]
    expected = threads * calls

    # lapse: default buffer size and flush interval, writing a real store.
    store = workdir / "loss-store"
    settings = lapse.configure(dir=store, level="minimal")
    fn = lapse.timed("loss")(f)
    fn(1)
    settle_writer()
    lapse.sql("select count(*) from events")  # warm DuckDB up, outside the timing
    RECORDER.buffer.clear()

    peak = [0]
    running = threading.Event()
    running.set()

    def watch():
        while running.is_set():
            peak[0] = max(peak[0], len(RECORDER.buffer))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def work():
        for _ in itertools.repeat(None, calls):
            fn(1)

    seconds = run_threads(threads, work)
    running.clear()
    watcher.join()
    t0 = time.perf_counter()
    lapse.flush()
    flush_s = time.perf_counter() - t0
    stored = lapse.sql("select count(*) from events where name = 'loss'").column(0)[0].as_py()
    status = lapse.status()
    segments = len(list((store / "events").glob("*.parquet")))
    lapse.reset()
    lapse_result = {
        "expected": expected,
        "stored": stored - 1,  # less the warm-up call
        "dropped": status["dropped"],
        "buffer_size": settings.buffer_size,
        "flush_interval_s": settings.flush_interval / 1e9,
        "peak_buffered": peak[0],
        "segments": segments,
        "seconds": seconds,
        "calls_per_s": expected / seconds,
        "final_flush_s": flush_s,
    }

    # OpenTelemetry: BatchSpanProcessor with its defaults, a discarding exporter.
    provider, exporter = otel_setup()
    try:  # private, for the report only
        processor = provider._active_span_processor._span_processors[0]
        queue_size = processor._batch_processor._max_queue_size
    except (AttributeError, IndexError):
        queue_size = None
    traced = otel_decorator(provider.get_tracer("benchmarks.loss"))(f)

    def traced_work():
        for _ in itertools.repeat(None, calls):
            traced(1)

    otel_seconds = run_threads(threads, traced_work)
    provider.force_flush()
    provider.shutdown()
    otel_result = {
        "expected": expected,
        "exported": exporter.exported,
        "lost": expected - exporter.exported,
        "max_queue_size": queue_size,
        "seconds": otel_seconds,
        "calls_per_s": expected / otel_seconds,
    }
    return {"threads": threads, "calls_per_thread": calls, "lapse": lapse_result,
            "otel": otel_result}


# -- 3. writer throughput ---------------------------------------------------------------


def bench_writer(cfg, workdir):
    import lapse
    from lapse._recorder import RECORDER

    n = cfg["writer_events"]
    store = workdir / "writer-store"
    lapse.configure(dir=store, level="standard", flush_interval="1h", buffer_size=n)
    fns = {level: lapse.timed(f"writer_{level}", level=level)(f)
           for level in ("minimal", "standard")}
    for fn in fns.values():
        fn(1)
    settle_writer()
    for fn in fns.values():  # one small segment of each kind warms the encoder up
        fn(1)
    lapse.flush()

    results = {level: {"flush_s": [], "prefill_ns_per_call": []} for level in fns}
    for rep in range(cfg["writer_reps"]):
        for level in (list(fns) if rep % 2 == 0 else list(reversed(fns))):
            fn = fns[level]
            gc.collect()
            results[level]["prefill_ns_per_call"].append(time_calls(fn, n))
            assert len(RECORDER.buffer) == n, "the prefill did not fit in the buffer"
            t0 = time.perf_counter()
            lapse.flush()
            results[level]["flush_s"].append(time.perf_counter() - t0)
            assert not RECORDER.buffer, "flush() left events in the buffer"

    dropped = sum(lapse.status()["dropped"].values())
    rows = lapse.sql(
        "select name, count(*) as n from events where name like 'writer_%' group by name"
    ).to_pylist()
    stored = {row["name"]: row["n"] for row in rows}
    lapse.reset()
    out = {"events_per_flush": n, "reps": cfg["writer_reps"], "dropped": dropped}
    for level, result in results.items():
        flush_s = median(result["flush_s"])
        out[level] = {
            "flush_s": flush_s,
            "events_per_s": n / flush_s,
            "flush_s_all": result["flush_s"],
            "prefill_ns_per_call": median(result["prefill_ns_per_call"]),
            "stored": stored.get(f"writer_{level}", 0),
            "expected_stored": n * cfg["writer_reps"] + 2,
        }
    return out


# -- 4. memory per buffered event ---------------------------------------------------------


def memory_child(level, n, method, function):
    """In a fresh process: bytes per event of ``n`` events sitting in the buffer.

    ``rss``: how much the resident set grows while the buffer fills from 0 to
    ``n`` events, and from ``n`` to ``2n`` (the second figure is the one used: by
    then memory freed during start-up has been reused, so all of it is new).
    ``tracemalloc``: bytes Python allocated for ``n`` events (exact, but without
    the allocator's rounding; slow, so the parent asks for fewer events).

    ``function`` matters: a duration under 257 ns is one of CPython's cached
    small ints and costs nothing, so ``f`` (a few hundred ns with lapse) often
    stores its duration for free, while any function doing real work (``g``,
    about 1 µs) allocates a 32-byte int for it.
    """
    import tracemalloc

    import lapse
    from lapse._recorder import RECORDER

    clear_lapse_environment()
    store = Path(tempfile.mkdtemp(prefix="lapse-bench-memory-"))
    try:
        lapse.configure(dir=store, level="standard", flush_interval="1h", buffer_size=2 * n + 10)
        fn = lapse.timed("memory", level=level)(MEMORY_FUNCTIONS[function])
        fn(1)
        settle_writer()
        fn(1)
        RECORDER.buffer.clear()
        gc.collect()

        def fill():
            for _ in itertools.repeat(None, n):
                fn(1)
            gc.collect()

        if method == "tracemalloc":
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            fill()
            sizes = [tracemalloc.get_traced_memory()[0] - before]
            tracemalloc.stop()
        else:
            before = rss_bytes()
            fill()
            middle = rss_bytes()
            fill()
            sizes = [middle - before, rss_bytes() - middle]
        buffered = len(RECORDER.buffer)
        RECORDER.buffer.clear()  # nothing to write at exit
        print(json.dumps({"events": buffered, "bytes_per_event": [size / n for size in sizes]}))
    finally:
        lapse.reset()
        shutil.rmtree(store, ignore_errors=True)


def bench_memory(cfg):
    n = cfg["memory_events"]
    counts = {"rss": n, "tracemalloc": max(1000, n // 10)}
    samples = {}
    for _ in range(cfg["memory_reps"]):
        for level in ("minimal", "standard"):
            for function in MEMORY_FUNCTIONS:
                for method, count in counts.items():
                    output = subprocess.run(
                        [sys.executable, __file__, "--memory-child", level, str(count), method,
                         function],
                        capture_output=True, text=True, check=True, env=child_environment(),
                        timeout=600,
                    ).stdout
                    result = json.loads(output.strip().splitlines()[-1])
                    assert result["events"] == count * (2 if method == "rss" else 1), result
                    samples.setdefault((level, function, method), []).append(
                        result["bytes_per_event"]
                    )

    def figures(level, function):
        rss = samples[level, function, "rss"]
        return {
            "rss_bytes_per_event": median([s[1] for s in rss]),
            "rss_first_n": median([s[0] for s in rss]),
            "tracemalloc_bytes_per_event": median(
                [s[0] for s in samples[level, function, "tracemalloc"]]
            ),
        }

    return {
        "events": n,
        "tracemalloc_events": counts["tracemalloc"],
        "reps": cfg["memory_reps"],
        **{
            level: {"f": figures(level, "f"), "g": figures(level, "g")}
            for level in ("minimal", "standard")
        },
    }


# -- 5. import time -------------------------------------------------------------------------


def child_environment():
    return {name: value for name, value in os.environ.items() if not name.startswith("LAPSE_")}


def importtime_us(output):
    """Total of the top-level ``-X importtime`` entries (cumulative microseconds)."""
    total = 0
    for line in output.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name[1:].startswith(" "):  # nested imports are indented
            total += int(cumulative)
    return total


DECORATE = """
import json, time, lapse

def function(i):
    namespace = {}
    exec(f"def f{i}({', '.join(f'p{j}' for j in range(i + 1))}): return 0", namespace)
    return namespace[f"f{i}"]

new, seen = [function(i) for i in range(41)], [function(0) for _ in range(40)]
t0 = time.perf_counter(); lapse.timed(new[0]); t1 = time.perf_counter()
for fn in new[1:]: lapse.timed(fn)
t2 = time.perf_counter()
for fn in seen: lapse.timed(fn)
t3 = time.perf_counter()
print(json.dumps({"first_ms": (t1 - t0) * 1e3, "new_shape_ms": (t2 - t1) / 40 * 1e3,
                  "seen_shape_ms": (t3 - t2) / 40 * 1e3}))
"""
"""Decorating: the first function (reads and checks the hot path's source, then compiles
its wrapper), 40 functions each with a parameter list not seen before, and 40 with one seen."""


def bench_import(cfg):
    statements = {
        "python": "pass",
        "lapse": "import lapse",
        "opentelemetry.sdk.trace": "import opentelemetry.sdk.trace",
        "prometheus_client": "import prometheus_client",
    }
    env = child_environment()

    def run(statement, importtime):
        flags = ["-X", "importtime"] if importtime else []
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, *flags, "-c", statement], capture_output=True,
                              text=True, check=True, env=env, timeout=120)
        return time.perf_counter() - t0, done.stderr

    for statement in statements.values():  # compile any stale .pyc files first
        run(statement, importtime=False)
    wall = {name: [] for name in statements}
    self_reported = {name: [] for name in statements}
    names = list(statements)
    for rep in range(cfg["import_reps"]):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            seconds, _ = run(statements[name], importtime=False)
            wall[name].append(seconds * 1e3)
            _, stderr = run(statements[name], importtime=True)
            self_reported[name].append(importtime_us(stderr) / 1e3)
    base_wall = median(wall["python"])
    base_self = median(self_reported["python"])
    decorations = [
        json.loads(subprocess.run([sys.executable, "-c", DECORATE], capture_output=True,
                                  text=True, check=True, env=env, timeout=120).stdout)
        for _ in range(cfg["decorate_reps"])
    ]
    return {
        "decorate_ms": {key: median([d[key] for d in decorations]) for key in decorations[0]},
        "reps": cfg["import_reps"],
        "python_ms": base_wall,
        "modules": {
            name: {
                "wall_ms": median(wall[name]) - base_wall,
                "importtime_ms": median(self_reported[name]) - base_self,
            }
            for name in names
            if name != "python"
        },
    }


# -- report ---------------------------------------------------------------------------------


def check_targets(results):
    measured = {}
    p_dearer = {}
    if "overhead" in results:
        for key, ratio in results["overhead"]["ratios"].items():
            if key not in TARGETS:
                continue
            measured[key] = ratio["value"]
            p_dearer[key] = ratio["p_dearer"]
    if "loss" in results:
        measured["loss_lapse_rows"] = results["loss"]["lapse"]["stored"]
    if "writer" in results:
        measured["writer_minimal"] = results["writer"]["minimal"]["events_per_s"]
        measured["writer_standard"] = results["writer"]["standard"]["events_per_s"]
    if "memory" in results:
        measured["memory_minimal"] = results["memory"]["minimal"]["g"]["rss_bytes_per_event"]
        measured["memory_standard"] = results["memory"]["standard"]["g"]["rss_bytes_per_event"]
    if "import" in results:
        measured["import_lapse"] = results["import"]["modules"]["lapse"]["wall_ms"]
    checks = []
    compare = {
        "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "==": lambda a, b: a == b,
    }
    for key, value in measured.items():
        label, op, goal = TARGETS[key]
        met = (value <= goal or p_dearer[key] >= 0.05) if op == "<= or not dearer" else (
            compare[op](value, goal))
        checks.append({"target": key, "label": label, "measured": value, "op": op, "goal": goal,
                       "met": met, "p_dearer": p_dearer.get(key)})
    return checks


def table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w)
                          for i, (c, w) in enumerate(zip(row, widths, strict=True))) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def report(results):
    out = []
    if "overhead" in results:
        res = results["overhead"]
        out.append(f"## 1. Per-call overhead (median of {res['rounds']} interleaved rounds)\n")
        labels = {
            "bare": "bare function", "off": "lapse off", "minimal": "lapse minimal",
            "standard": "lapse standard", "debug": "lapse debug",
            "debug_slow": "lapse debug, slow=1s", "floor": "floor (2 clock reads + append)",
            "floor_own": "floor, declared (x) not (*args, **kwargs)",
            "logging": "logging to a file", "prometheus": "prometheus Histogram.time()",
            "otel": "OpenTelemetry SDK span",
        }
        rows = [
            (labels[name], f"{row['ns_per_call']:,.0f}",
             f"{row['ns_per_call_q1']:,.0f}-{row['ns_per_call_q3']:,.0f}",
             f"{row['added_ns']:,.0f}", f"{row['x_bare']:,.1f}", f"{row['x_floor']:,.2f}")
            for name, row in res["variants"].items()
        ]
        out.append(table(["variant", "ns/call", "q1-q3", "added ns", "x bare", "added x floor"],
                         rows))
        out.append("")
        ratio_rows = [
            (TARGETS[key][0] if key in TARGETS else INFORMATION[key], f"{r['value']:.2f}",
             f"{r['per_round_median']:.2f}",
             f"{r['per_round_q1']:.2f}-{r['per_round_q3']:.2f}",
             f"{r['rounds_dearer']}/{res['rounds']} (p {r['p_dearer']:.2f})")
            for key, r in res["ratios"].items()
        ]
        out.append(table(["ratio", "of medians", "per-round median", "per-round q1-q3",
                          "rounds above 1 (sign test)"], ratio_rows))
        if res["lapse_dropped"]:
            out.append(f"\nWARNING: lapse dropped {res['lapse_dropped']} events during timing.")
        out.append("")
    if "loss" in results:
        res = results["loss"]
        lap, otel = res["lapse"], res["otel"]
        out.append(f"## 2. Lost events: {res['threads']} threads x {res['calls_per_thread']:,} "
                   "calls\n")
        out.append(table(
            ["tool", "arrived", "lost", "calls/s (all threads)", "notes"],
            [
                ("lapse minimal", f"{lap['stored']:,} / {lap['expected']:,}",
                 f"{lap['expected'] - lap['stored']:,} (dropped counted: "
                 f"{sum(lap['dropped'].values())})",
                 f"{lap['calls_per_s']:,.0f}",
                 f"buffer {lap['buffer_size']:,}, flush {lap['flush_interval_s']:g} s, "
                 f"peak buffered {lap['peak_buffered']:,}, {lap['segments']} segments"),
                ("OpenTelemetry batch", f"{otel['exported']:,} / {otel['expected']:,}",
                 f"{otel['lost']:,}", f"{otel['calls_per_s']:,.0f}",
                 f"queue {otel['max_queue_size'] or '?'} (defaults), discarding exporter"),
            ],
        ))
        out.append("")
    if "writer" in results:
        res = results["writer"]
        out.append(f"## 3. Writer throughput: flush() of {res['events_per_flush']:,} buffered "
                   f"events (median of {res['reps']})\n")
        out.append(table(
            ["level", "flush s", "events/s", "prefill ns/call", "rows stored"],
            [
                (level, f"{res[level]['flush_s']:.3f}", f"{res[level]['events_per_s']:,.0f}",
                 f"{res[level]['prefill_ns_per_call']:,.0f}",
                 f"{res[level]['stored']:,} / {res[level]['expected_stored']:,}")
                for level in ("minimal", "standard")
            ],
        ))
        out.append("")
    if "memory" in results:
        res = results["memory"]
        n = res["events"]
        out.append(f"## 4. Memory per buffered event (fresh process per figure, median of "
                   f"{res['reps']})\n")
        functions = {"g": "~1 µs function", "f": "trivial f (duration often a cached int)"}
        out.append(table(
            ["level", "function", f"RSS bytes/event ({n:,} to {2 * n:,})",
             f"tracemalloc bytes/event ({res['tracemalloc_events']:,})"],
            [
                (level, label, f"{res[level][function]['rss_bytes_per_event']:.0f}",
                 f"{res[level][function]['tracemalloc_bytes_per_event']:.0f}")
                for level in ("minimal", "standard")
                for function, label in functions.items()
            ],
        ))
        out.append("")
    if "import" in results:
        res = results["import"]
        out.append(f"## 5. Import time in a fresh process (median of {res['reps']}, minus bare "
                   f"`python -c pass` = {res['python_ms']:.1f} ms)\n")
        out.append(table(
            ["module", "wall ms", "-X importtime ms"],
            [(name, f"{m['wall_ms']:.1f}", f"{m['importtime_ms']:.1f}")
             for name, m in res["modules"].items()],
        ))
        out.append("")
        ms = res["decorate_ms"]
        out.append("Decorating a function with `lapse.timed` (its wrapper is compiled once per "
                   "parameter list; fresh process, median of runs):\n")
        out.append(table(["case", "ms per function"], [
            ("the first one (reads and checks the hot path's source)", f"{ms['first_ms']:.2f}"),
            ("a parameter list not seen before", f"{ms['new_shape_ms']:.2f}"),
            ("a parameter list already seen", f"{ms['seen_shape_ms']:.3f}"),
        ]))
        out.append("")
    checks = results.get("targets", [])
    if checks:
        out.append("## Targets\n")

        def show(value):
            return f"{value:,.2f}" if isinstance(value, float) and value < 100 else f"{value:,.0f}"

        def goal(check):
            if check["op"] == "<= or not dearer":
                return f"<= {check['goal']:,}, or not dearer (sign test p >= 0.05)"
            return f"{check['op']} {check['goal']:,}"

        def measured(check):
            if check["op"] == "<= or not dearer":
                return f"{show(check['measured'])} (p {check['p_dearer']:.2f})"
            return show(check["measured"])

        out.append(table(
            ["target", "measured", "goal", "met"],
            [(c["label"], measured(c), goal(c), "yes" if c["met"] else "NO") for c in checks],
        ))
    return "\n".join(out)


def metadata(cfg, quick):
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "settings": cfg,
        "lapse_git": git_state(),
        "versions": {
            name: package_version(name)
            for name in ("lapse", "pyarrow", "duckdb", "opentelemetry-sdk", "prometheus-client")
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute, rougher figures")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only", metavar="SECTIONS",
                        help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--memory-child", nargs=4, metavar=("LEVEL", "N", "METHOD", "FN"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        level, n, method, function = args.memory_child
        memory_child(level, int(n), method, function)
        return 0

    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    cfg = QUICK if args.quick else FULL
    clear_lapse_environment()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_otel_logging()

    results = {"meta": metadata(cfg, args.quick)}
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="lapse-bench-"))
    try:
        steps = {
            "overhead": lambda: bench_overhead(cfg, workdir),
            "loss": lambda: bench_loss(cfg, workdir),
            "writer": lambda: bench_writer(cfg, workdir),
            "memory": lambda: bench_memory(cfg),
            "import": lambda: bench_import(cfg),
        }
        for section in SECTIONS:
            if section in sections:
                t0 = time.perf_counter()
                print(f"running {section} ...", file=sys.stderr, flush=True)
                results[section] = steps[section]()
                print(f"  {section}: {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["seconds"] = time.perf_counter() - started
    results["targets"] = check_targets(results)

    meta = results["meta"]
    print(f"lapse overhead benchmark: Python {meta['python']}, {meta['cpus']} CPUs, "
          f"{meta['platform']}, lapse {meta['lapse_git'] or meta['versions']['lapse']}"
          f"{' (quick)' if args.quick else ''}, {meta['seconds']:.0f} s\n")
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

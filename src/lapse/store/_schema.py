"""The stored columns: a public, versioned contract (see docs/schema.md).

Any Parquet reader can use the store without lapse: DuckDB
``read_parquet('.lapse/events/*.parquet', union_by_name=true)``, pandas,
Polars or Spark. Columns are only ever added in a new schema version, never
renamed or retyped; the version is in each file's key-value metadata under
``lapse.schema_version``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"lapse.schema_version"

# (column, Arrow type name, description) — the table docs/schema.md is checked against.
EVENT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "string", "Event name: the decorated function's module.qualname or the given name."),
    ("kind", "string", "What made the event: function, span (later also test, request)."),
    ("level", "string", "Level it was recorded at: minimal, standard or debug."),
    ("run_id", "string", "The process run that wrote it; joins runs.run_id."),
    ("span_id", "int64", "Id of this call, unique within its run (null at minimal)."),
    ("parent_id", "int64", "span_id of the enclosing call in the same run, null at the top."),
    ("trace_id", "int64", "span_id of the outermost call of the tree this call belongs to."),
    ("start_ns", "int64", "Start, nanoseconds since the Unix epoch (UTC)."),
    ("duration_ns", "int64", "Wall-clock duration in nanoseconds, from a monotonic clock."),
    ("cpu_ns", "int64", "CPU time of the calling thread during the call (debug, sync calls)."),
    ("status", "string", "ok or error."),
    ("error_type", "string",
     "Exception class (module.QualName, builtins bare) when status is error."),
    ("caller", "string", "module:qualname of the calling function (standard and debug)."),
    ("thread", "string", "Name of the thread that made the call (standard and debug)."),
    ("stack", "list<string>", "Call stack, outermost first, path:line in function (debug)."),
    ("user", "string", "Pseudonymised user (keyed hash) at debug level with LAPSE_USER_KEY set."),
    ("attrs", "string", "User attributes as a JSON object; secret-looking keys redacted."),
)

RUN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("run_id", "string", "One per process start (and per fork): time-sortable, unique."),
    ("kind", "string", "process (later also test and stress runs)."),
    ("service", "string", "Service name (configure(service=) / LAPSE_SERVICE)."),
    ("version", "string", "Release of the measured code (LAPSE_VERSION)."),
    ("environment", "string", "Deployment environment (LAPSE_ENVIRONMENT)."),
    ("host", "string", "Host name."),
    ("pid", "int64", "Process id."),
    ("program", "string", "Name of the program (no directories)."),
    ("python", "string", "Python implementation and version."),
    ("lapse_version", "string", "Version of lapse that wrote the run."),
    ("git_commit", "string", "Commit checked out where the process started, when known."),
    ("level", "string", "Global level of the run."),
    ("started_ns", "int64", "Process start under lapse, ns since the epoch."),
    ("updated_ns", "int64", "Last time this record was written."),
    ("ended_ns", "int64", "Clean shutdown time; null while running or after a crash."),
    ("dropped", "int64", "Events lost in all (buffer full, write errors, internal errors)."),
    ("dropped_buffer_full", "int64", "Events dropped because the buffer was full."),
    ("dropped_write_error", "int64", "Events lost because the store could not be written."),
    ("dropped_internal", "int64", "Events lost to an internal lapse error."),
    ("os", "string", "Operating system, release and machine."),
    ("cpu_count", "int64", "Usable CPUs."),
    ("memory_bytes", "int64", "Physical memory."),
    ("packages", "string", "JSON object of package versions named by LAPSE_PACKAGES."),
    ("user", "string", "Pseudonymised OS account (only with LAPSE_USER_KEY set)."),
)


def _arrow_type(name: str) -> pa.DataType:
    import pyarrow as pa

    return {"string": pa.string(), "int64": pa.int64(), "list<string>": pa.list_(pa.string())}[
        name
    ]


@cache
def event_schema() -> pa.Schema:
    """The Arrow schema of event segments."""
    import pyarrow as pa

    return pa.schema(
        [pa.field(name, _arrow_type(kind)) for name, kind, _ in EVENT_COLUMNS],
        metadata={METADATA_KEY: str(SCHEMA_VERSION).encode()},
    )


@cache
def run_schema() -> pa.Schema:
    """The Arrow schema of run records."""
    import pyarrow as pa

    return pa.schema(
        [pa.field(name, _arrow_type(kind)) for name, kind, _ in RUN_COLUMNS],
        metadata={METADATA_KEY: str(SCHEMA_VERSION).encode()},
    )

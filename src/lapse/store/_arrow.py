"""Arrow arrays built from buffers, for the background writer.

``pyarrow.array()`` and ``pyarrow.scalar()`` import pandas the first time they
run (pyarrow checks whether the input is a pandas object). In the writer that
cost 0.7 s of CPU and ~50 MB in every process that had not imported pandas,
and at interpreter exit the import fails outright (pandas registers exit hooks,
which Python refuses during shutdown), losing the final flush. Building arrays
from NumPy buffers with ``Array.from_buffers`` imports nothing.

Low-cardinality text (names, threads, callers) is dictionary-encoded on the
way, which is also what makes it cheap: each distinct string is encoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa


def _validity(missing: list[bool]) -> Any:
    import numpy as np
    import pyarrow as pa

    if not any(missing):
        return None
    present = ~np.array(missing, dtype=bool)
    return pa.py_buffer(np.packbits(present, bitorder="little"))


def int64(values: Sequence[int | None] | npt.NDArray[np.int64]) -> pa.Array:
    """An int64 array; ``None`` becomes null. A NumPy array is used as it is."""
    import numpy as np
    import pyarrow as pa

    n = len(values)
    if isinstance(values, np.ndarray):
        return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(values)])
    nones = values.count(None)
    if nones == n:
        return pa.nulls(n, pa.int64())
    validity = None
    if nones:
        missing = np.fromiter((v is None for v in values), dtype=bool, count=n)
        values = [0 if v is None else v for v in values]
        validity = pa.py_buffer(np.packbits(~missing, bitorder="little"))
    data = np.fromiter(values, dtype=np.int64, count=n)
    return pa.Array.from_buffers(pa.int64(), n, [validity, pa.py_buffer(data)])


def int64_valid(values: npt.NDArray[np.int64], present: npt.NDArray[np.bool_]) -> pa.Array:
    """An int64 array of ``values`` (contiguous), null where ``present`` is False."""
    import numpy as np
    import pyarrow as pa

    validity = pa.py_buffer(np.packbits(present, bitorder="little"))
    return pa.Array.from_buffers(pa.int64(), len(values), [validity, pa.py_buffer(values)])


def int64_plus(values: Sequence[int] | npt.NDArray[np.int64], offset: int) -> pa.Array:
    """An int64 array of ``values`` shifted by ``offset`` (no nulls)."""
    import numpy as np
    import pyarrow as pa

    data = np.asarray(values, dtype=np.int64) + np.int64(offset)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(data)])


def _plain_strings(values: Sequence[str | None]) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    encoded = [b"" if v is None else v.encode("utf-8", "surrogateescape") for v in values]
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    missing = [v is None for v in values]
    return pa.Array.from_buffers(
        pa.large_string(), len(values),
        [_validity(missing), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    ).cast(pa.string())


def strings(values: Sequence[str | None]) -> pa.Array:
    """A string array, dictionary-encoded first when values repeat a lot."""
    import numpy as np
    import pyarrow as pa

    distinct: dict[str | None, int] = {}
    indices = [distinct.setdefault(v, len(distinct)) for v in values]
    if len(distinct) > len(values) // 2:
        return _plain_strings(values)
    dictionary = _plain_strings(list(distinct))
    index = pa.Array.from_buffers(
        pa.int32(), len(values), [None, pa.py_buffer(np.array(indices, dtype=np.int32))]
    )
    return pa.DictionaryArray.from_arrays(index, dictionary).cast(pa.string())


def by_identity(
    values: Sequence[Any], label: Callable[[Any], str | None], *, index: Any = None
) -> pa.Array:
    """A string column for values that repeat as the same objects (instruments, code, names).

    Distinct objects are found by ``id()`` with NumPy, so ``label`` runs once per
    distinct object and nothing is hashed per event; equal values held by
    different objects merely repeat in the dictionary. With ``index`` (a NumPy
    array of positions in ``values``) the column is ``values[index]``.
    """
    import numpy as np

    n = len(values)
    ids = np.fromiter(map(id, values), dtype=np.uint64, count=n)
    if n and ids.min() == ids.max():  # one object throughout (one thread, one caller)
        return constant(label(values[0]), n if index is None else len(index))
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return by_code(inverse if index is None else inverse[index],
                   [label(values[i]) for i in first])


def by_code(codes: Any, labels: Sequence[str | None]) -> pa.Array:
    """A string column from integer ``codes`` (a NumPy array) that index ``labels``."""
    import numpy as np
    import pyarrow as pa

    index = pa.Array.from_buffers(
        pa.int32(), len(codes), [None, pa.py_buffer(np.asarray(codes, dtype=np.int32))]
    )
    return pa.DictionaryArray.from_arrays(index, _plain_strings(labels)).cast(pa.string())


def constant(value: str | None, n: int) -> pa.Array:
    """``n`` copies of one string (``None``: n nulls)."""
    import numpy as np
    import pyarrow as pa

    if value is None:
        return pa.nulls(n, pa.string())
    index = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(np.zeros(n, np.int32))])
    return pa.DictionaryArray.from_arrays(index, _plain_strings([value])).cast(pa.string())


def string_lists(values: Sequence[Sequence[str] | None]) -> pa.Array:
    """A list<string> array; ``None`` becomes null."""
    import numpy as np
    import pyarrow as pa

    flat = [item for v in values if v is not None for item in v]
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([0 if v is None else len(v) for v in values], out=offsets[1:])
    missing = [v is None for v in values]
    return pa.Array.from_buffers(
        pa.list_(pa.string()), len(values), [_validity(missing), pa.py_buffer(offsets)],
        children=[_plain_strings(flat)],
    )

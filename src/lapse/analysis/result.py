"""What every analysis result offers, whatever it found.

A result is a dataclass with the numbers; this base adds the ways to look at
it: ``.table`` (Arrow, where the result is tabular), ``to_pandas()``,
``to_dict()`` / ``to_json()``, ``explain()`` (what was tested, on how much
data, with what confidence), a Rich rendering for terminals and
``_repr_html_`` for Jupyter. Rendering lives in ``lapse.reporting.analysis``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


class AnalysisResult:
    """Base of the results of ``lapse analyze``: display, conversion and explanation."""

    schema = "lapse.analysis/1"

    @property
    def table(self) -> pa.Table:
        """The main table of the result as Arrow."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``--format json`` as Python objects."""
        raise NotImplementedError

    def explain(self) -> str:
        """What was tested, on how much data, with what confidence, in plain words."""
        raise NotImplementedError

    def to_pandas(self) -> pd.DataFrame:
        """``.table`` as a pandas DataFrame (pandas must be installed)."""
        return self.table.to_pandas()

    def to_json(self) -> str:
        """JSON text (NaN and infinity become null)."""
        return json.dumps(_clean(self.to_dict()), indent=2) + "\n"

    def render(self, fmt: str = "table") -> str:
        """The result as text: ``table`` (plain), ``markdown``, ``json`` or ``html``."""
        from lapse.reporting.analysis import render

        return render(self, fmt)

    def __rich__(self) -> Any:
        from lapse.reporting.analysis import rich_renderable

        return rich_renderable(self)

    def _repr_html_(self) -> str:
        from lapse.reporting.analysis import render

        return render(self, "html")

    def __str__(self) -> str:
        return self.render("table")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf to None, tuples to lists, numpy scalars to Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

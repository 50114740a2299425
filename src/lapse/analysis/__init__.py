"""Statistics over the store: summaries (five-number, percentiles, outliers) and more.

Each analysis is a plain function over a selection of events; DuckDB does the
scanning, filtering and grouping, NumPy the exact order statistics.
"""

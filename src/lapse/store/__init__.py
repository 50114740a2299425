"""The local store: Parquet segments per process, read through DuckDB (see ``_layout``)."""

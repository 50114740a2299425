"""lapse beside the tools teams already run: pytest, OpenTelemetry, Prometheus, web servers."""

"""OpenTelemetry metrics and spans, structlog events and leak reports for psycopg2_pool."""

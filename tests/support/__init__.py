"""Helpers the tests import by name (``from tests.support.pools import wait_until``); the
fixtures are in tests/conftest.py.

- ``pools``: pool and server-side helpers (``MakePool``, ``wait_until``, ``backend_count``...);
- ``otel``: a real OpenTelemetry SDK with in-memory exporters, and metric points;
- ``system``: environment variables, free ports, system binaries;
- ``errors``: everything an exception shows;
- ``faults``: a PostgreSQL of a module's own and a proxy that hangs;
- ``bouncer``: a real PgBouncer in front of the test server;
- ``gunicorn``: real gunicorn and Prometheus, the docs' recipes, the dashboard's queries.
"""

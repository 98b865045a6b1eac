"""SQLAlchemy on this pool (``creator=pool.getconn``, ``NullPool``, ``close_returns=True``),
with the real SQLAlchemy 2 and opentelemetry-instrumentation-sqlalchemy (issue 25, item 1):

- a ``Session`` that is never closed is reported as a leak naming the application's line,
  not SQLAlchemy's frames, however deep the ORM call (up to 27 of SQLAlchemy's frames stand
  between a ``Session`` call and the pool);
- ``instrument(pool)`` and ``SQLAlchemyInstrumentor`` together put the query spans and the
  pool's ``getconn`` span in the request's trace, as siblings under the request's span.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from psycopg2_pool import ConnectionPool
from telemetry import instrument
from tests.support.otel import Otel

sqlalchemy = pytest.importorskip("sqlalchemy")
from sqlalchemy import Column, Integer, orm, select, text  # noqa: E402


class Base(orm.DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "sqlalchemy_leak_items"
    id = Column(Integer, primary_key=True)


@pytest.fixture
def engine(dsn: str) -> Iterator[tuple[ConnectionPool, Any]]:
    pool = ConnectionPool(1, 4, dsn=dsn, timeout=5, close_returns=True)
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", creator=pool.getconn,
                                      poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
    yield pool, engine
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
    engine.dispose()
    pool.close()


# Each opens a Session and leaves it open, its connection checked out (the line to name).
def leak_execute(engine: Any) -> Any:
    session = orm.Session(engine)
    session.execute(text("SELECT 1")).scalar()  # the line: execute
    return session


def leak_select(engine: Any) -> Any:
    session = orm.Session(engine)
    session.scalars(select(Item)).all()  # the line: select
    return session


def leak_get(engine: Any) -> Any:
    session = orm.Session(engine)
    session.get(Item, 1)  # the line: get
    return session


def leak_flush(engine: Any) -> Any:
    session = orm.Session(engine)
    session.add(Item(id=1))
    session.flush()  # the line: flush
    return session


@pytest.mark.parametrize("leak", [leak_execute, leak_select, leak_get, leak_flush],
                         ids=["execute", "select", "get", "flush"])
def test_an_unclosed_session_is_reported_at_the_applications_line(
        engine: tuple[ConnectionPool, Any], leak: Any) -> None:
    pool, sa_engine = engine
    handle = instrument(pool, leak_threshold=60)
    try:
        session = leak(sa_engine)
        [report] = handle.leaks(all_checkouts=True)
        function = leak.__name__
        assert report.site.startswith("tests/telemetry/test_sqlalchemy.py:"), report.site
        assert report.site.endswith(f" in {function}"), report.site
        innermost = report.frames[-1]
        assert innermost.function == function
        assert "# the line:" in (innermost.source or ""), innermost
        assert not any("/sqlalchemy/" in f.file for f in report.frames), report.frames
        session.rollback()
        session.close()
        assert not handle.leaks(all_checkouts=True)
    finally:
        handle.uninstrument()


def test_query_spans_and_the_pools_span_share_the_request_trace(
        engine: tuple[ConnectionPool, Any], otel: Otel) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    pool, sa_engine = engine
    handle = instrument(pool, tracer_provider=otel.tracer_provider, checkout_spans="all",
                        leak_threshold=None)
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(engine=sa_engine, tracer_provider=otel.tracer_provider)
    try:
        with otel.tracer.start_as_current_span("GET /items") as request, \
                orm.Session(sa_engine) as session:
            session.scalars(select(Item)).all()
        request_context = request.get_span_context()
        spans = otel.spans()
        getconn = [s for s in spans if s.name == "getconn"]
        queries = [s for s in spans if s.name not in ("getconn", "GET /items")
                   and s.attributes.get("db.statement")]
        assert getconn and queries, [s.name for s in spans]
        by_id = {s.context.span_id: s for s in spans}

        def ancestors(span: Any) -> list[str]:
            names = []
            while span.parent is not None and span.parent.span_id in by_id:
                span = by_id[span.parent.span_id]
                names.append(span.name)
            return names

        for span in (*getconn, *queries):
            assert span.context.trace_id == request_context.trace_id, span.name
            assert ancestors(span)[-1] == "GET /items", (span.name, ancestors(span))
        # The pool's span sits inside SQLAlchemy's own "connect" span, where it checks out.
        assert ancestors(getconn[0]) in (["GET /items"], ["connect", "GET /items"])
        assert "sqlalchemy_leak_items" in queries[0].attributes["db.statement"]
    finally:
        instrumentor.uninstrument()
        handle.uninstrument()

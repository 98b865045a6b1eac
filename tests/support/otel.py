"""A real OpenTelemetry SDK with in-memory exporters (the ``otel`` fixture), and its points."""

from __future__ import annotations

from typing import Any


class Otel:
    """A real OpenTelemetry SDK wired to in-memory exporters, for one test."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.tracer_provider.get_tracer("tests")

    def metrics(self) -> dict[str, Any]:
        """Metric name -> SDK Metric, from one collection."""
        data = self.reader.get_metrics_data()
        out: dict[str, Any] = {}
        if data is None:
            return out
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    out[metric.name] = metric
        return out

    def spans(self, name: str | None = None) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def point(metric: Any, attributes: dict[str, str] | None = None) -> Any:
    """The data point of ``metric`` whose attributes include ``attributes``."""
    wanted = attributes or {}
    for data_point in metric.data.data_points:
        if all(data_point.attributes.get(k) == v for k, v in wanted.items()):
            return data_point
    raise AssertionError(f"no point of {metric.name} with {wanted}: "
                         f"{[dict(p.attributes) for p in metric.data.data_points]}")


_FIGURES: list[str] = []

"""Generate the Grafana dashboard from the telemetry's metric names.

    python3 dashboards/build.py          # rewrites dashboards/psycopg2-pool-overview.json
    python3 dashboards/build.py --check  # exits 1 if the committed JSON is out of date

The metric names come from ``telemetry.names`` (one place), turned into the names the
OpenTelemetry Prometheus exporter writes: dots become underscores, ``s`` adds ``_seconds``,
counters get ``_total``, histograms ``_bucket``/``_sum``/``_count``. A plain generator rather
than a dashboards-as-code library: the dashboard is a few dicts, and the JSON stays committed.

Every query aggregates with ``sum by (pool)`` so that many processes and hosts add up; the
"per instance" row drills down by ``instance``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telemetry import names  # noqa: E402

OUTPUT = ROOT / "dashboards" / "psycopg2-pool-overview.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
POOL = "db_client_connection_pool_name"
SELECTOR = f'job=~"$job", instance=~"$instance", {POOL}=~"$pool"'
RATE = "$__rate_interval"


def prom(name: str, suffix: str = "") -> str:
    """The Prometheus exporter's name for a metric of ``telemetry.names``."""
    metric = names.METRIC_BY_NAME[name]
    base = name.replace(".", "_")
    if metric.unit == "s":
        base += "_seconds"
    if metric.instrument in ("Counter", "ObservableCounter"):
        base += "_total"
    return base + suffix


def label(name: str) -> str:
    return name.replace(".", "_")


STATE = label(names.STATE)
REASON = label(names.REASON)


def series(metric: str, extra: str = "") -> str:
    return f"{prom(metric)}{{{SELECTOR}{', ' + extra if extra else ''}}}"


def rate(metric: str, by: str = POOL) -> str:
    return f"sum by ({by}) (rate({series(metric)}[{RATE}]))"


def quantile(q: float, metric: str) -> str:
    return (f"histogram_quantile({q}, sum by (le, {POOL}) "
            f"(rate({prom(metric, '_bucket')}{{{SELECTOR}}}[{RATE}])))")


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref,
            "range": True}


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in steps]}


class Layout:
    """Assigns ids and grid positions, left to right, top to bottom (24 columns)."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_height = 0

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1,
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}})
        self.y += 1

    def newline(self) -> None:
        self.y += self.row_height
        self.x = self.row_height = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        panel["datasource"] = DATASOURCE
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def panel(kind: str, title: str, description: str, targets: list[dict[str, Any]], unit: str,
          steps: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "min": 0}
    if steps is not None:
        defaults["thresholds"] = steps
    if kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": True,
                              "thresholdsStyle": {"mode": "dashed" if steps else "off"}}
    return {"type": kind, "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options}


OK_WARN_BAD = thresholds((None, "green"), (0.7, "orange"), (0.9, "red"))


def build() -> dict[str, Any]:
    used_series = series(names.COUNT, f'{STATE}="used"')
    used = f"sum by ({POOL}) ({used_series})"
    idle = f"sum by ({POOL}) ({series(names.COUNT, f'{STATE}={chr(34)}idle{chr(34)}')})"
    maximum = f"sum by ({POOL}) ({series(names.MAX)})"
    layout = Layout()

    layout.row("Overview")
    layout.add(panel("stat", "Connections in use",
                     "Checked-out connections, summed over every process of the pool.",
                     [target(used, "{{" + POOL + "}}", "A")], "short"), 6, 4)
    layout.add(panel("stat", "Utilisation",
                     "Connections in use / maxconn, over every process. Near 100 % the pool "
                     "is saturated: callers wait or time out.",
                     [target(f"{used} / {maximum}", "{{" + POOL + "}}", "A")],
                     "percentunit", OK_WARN_BAD), 6, 4)
    layout.add(panel("stat", "Timeouts (range)",
                     "getconn calls that gave up, over the dashboard's time range.",
                     [target(f"sum by ({POOL}) (increase({series(names.TIMEOUTS)}[$__range]))",
                             "{{" + POOL + "}}", "A")], "short",
                     thresholds((None, "green"), (1, "red"))), 6, 4)
    layout.add(panel("stat", "Leaks (range)",
                     "Connections held past the leak threshold or collected unreturned, over "
                     "the time range. Read the leak reports in the logs for the lines.",
                     [target(f"sum by ({POOL}) (increase({series(names.LEAKS)}[$__range]))",
                             "{{" + POOL + "}}", "A")], "short",
                     thresholds((None, "green"), (1, "red"))), 6, 4)

    layout.row("Connections")
    layout.add(panel("timeseries", "Connections: used, idle, max",
                     "Open connections by state, and maxconn, summed over every process.",
                     [target(used, "used {{" + POOL + "}}", "A"),
                      target(idle, "idle {{" + POOL + "}}", "B"),
                      target(maximum, "max {{" + POOL + "}}", "C")], "short"), 12, 8)
    layout.add(panel("timeseries", "Utilisation",
                     "Connections in use / maxconn. Sustained above 90 %: raise maxconn (within "
                     "the server's max_connections) or shorten checkouts.",
                     [target(f"{used} / {maximum}", "{{" + POOL + "}}", "A")],
                     "percentunit", OK_WARN_BAD), 12, 8)
    layout.add(panel("timeseries", "Pending requests",
                     "getconn calls waiting for a connection right now.",
                     [target(f"sum by ({POOL}) ({series(names.PENDING_REQUESTS)})",
                             "{{" + POOL + "}}", "A")], "short",
                     thresholds((None, "green"), (1, "orange"), (10, "red"))), 12, 8)
    layout.add(panel("timeseries", "Connection errors",
                     "Failed attempts to open a connection per second (server down, refused, "
                     "max_connections reached, authentication).",
                     [target(rate(names.ERRORS), "{{" + POOL + "}}", "A")], "ops",
                     thresholds((None, "green"), (0.01, "red"))), 12, 8)

    layout.row("Latency")
    for metric, title, description, warn in (
            (names.WAIT_TIME, "Wait time", "Time getconn took to obtain a connection "
             "(p50/p95/p99). Above zero only when the pool was exhausted.", 0.1),
            (names.USE_TIME, "Use (hold) time", "Time connections stay checked out "
             "(p50/p95/p99): long holds starve other callers.", 1.0),
            (names.CREATE_TIME, "Connection create time", "Time to open a new connection "
             "(p50/p95/p99): slow opens make pool growth and recovery slow.", 0.5)):
        layout.add(panel("timeseries", title, description,
                         [target(quantile(q, metric), f"p{int(q * 100)} {{{{{POOL}}}}}", ref)
                          for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))], "s",
                         thresholds((None, "green"), (warn, "orange"))), 8, 8)

    layout.row("Exhaustion, leaks, discards")
    layout.add(panel("timeseries", "Timeouts and exhaustion",
                     "Per second: getconn calls that found every connection in use "
                     "(exhaustion: they waited or failed), those that gave up (timeouts: "
                     "exhausted, or the server unavailable) and those refused at once because "
                     "max_waiting callers already waited (refused).",
                     [target(rate(names.TIMEOUTS), "timeouts {{" + POOL + "}}", "A"),
                      target(rate(names.EXHAUSTIONS), "exhaustion {{" + POOL + "}}", "B"),
                      target(rate(names.REFUSED), "refused {{" + POOL + "}}", "C")],
                     "ops", thresholds((None, "green"), (0.01, "red"))), 8, 8)
    layout.add(panel("timeseries", "Leaks",
                     "Leaks found per second: connections held past the leak threshold, or "
                     "garbage-collected while checked out.",
                     [target(rate(names.LEAKS), "{{" + POOL + "}}", "A")], "ops",
                     thresholds((None, "green"), (0.001, "red"))), 8, 8)
    layout.add(panel("timeseries", "Discards by reason",
                     "Connections closed by the pool per second, by reason (broken, "
                     "idle_timeout, max_lifetime, failed_check, ...).",
                     [target(rate(names.DISCARDS, f"{POOL}, {REASON}"),
                             "{{" + REASON + "}} {{" + POOL + "}}", "A")], "ops"), 8, 8)

    layout.row("Outages")
    layout.add(panel("timeseries", "Unable to connect for",
                     "How long the pool has been unable to open a connection (0 when it can), "
                     "the longest over its processes. It grows from the first failed attempt "
                     "until one succeeds; the Psycopg2PoolCannotConnect alert fires past 30 s "
                     "while attempts keep failing.",
                     [target(f"max by ({POOL}) ({series(names.UNAVAILABLE_TIME)})",
                             "{{" + POOL + "}}", "A")], "s",
                     thresholds((None, "green"), (30, "red"))), 8, 8)
    layout.add(panel("timeseries", "Connection attempts and failures",
                     "Attempts to open a connection per second, and those that failed. "
                     "Failures with no successes: the server is down or unreachable (the pool "
                     "retries with a backoff of at most 0.5 s while callers wait or minconn "
                     "needs connections).",
                     [target(rate(names.ATTEMPTS), "attempts {{" + POOL + "}}", "A"),
                      target(rate(names.ERRORS), "failed {{" + POOL + "}}", "B")], "ops"), 8, 8)
    layout.add(panel("stat", "Outages (range)",
                     "Times opening connections started to fail, over the time range (one "
                     "per outage however many attempts failed; each process counts its own). "
                     "The pool_unavailable and pool_recovered log events give the error and "
                     "the length.",
                     [target(f"sum by ({POOL}) (increase({series(names.OUTAGES)}[$__range]))",
                             "{{" + POOL + "}}", "A")], "short",
                     thresholds((None, "green"), (1, "red"))), 8, 8)

    replaced = series(names.DISCARDS, REASON + '=~"role_changed|drained"')
    layout.row("Failover")
    layout.add(panel("stat", "Failovers seen (range)",
                     "Times a server lost the role the pool's target_session_attrs asks for "
                     "(a primary fenced or demoted, a standby promoted), over the time range: "
                     "each time, the pool replaced every connection to that server and opened "
                     "new ones through the DSN. The server_role_changed log event names the "
                     "server and what it reported; the Psycopg2PoolFailover alert fires on it.",
                     [target(f"sum by ({POOL}) (increase({series(names.ROLE_CHANGES)}"
                             f"[$__range]))", "{{" + POOL + "}}", "A")], "short",
                     thresholds((None, "green"), (1, "orange"))), 8, 8)
    layout.add(panel("timeseries", "Connections replaced (failover, drain)",
                     "Connections closed per second because their server changed role, or "
                     "because drain() was called: after a failover, one burst the size of "
                     "the pool, then nothing.",
                     [target(f"sum by ({POOL}, {REASON}) (rate({replaced}[{RATE}]))",
                             "{{" + REASON + "}} {{" + POOL + "}}", "A")], "ops"), 16, 8)
    by_server = f"{POOL}, {label(names.SERVER_ADDRESS)}, {label(names.SERVER_PORT)}"
    layout.add(panel("timeseries", "Connections by server",
                     "Connections open per server a multi-host DSN let libpq choose, idle and "
                     "in use: a write pool moves from the old primary to the new one at a "
                     "failover; a read pool (target_session_attrs=read-only or "
                     "prefer-standby, load_balance_hosts=random) spreads over the replicas.",
                     [target(f"sum by ({by_server}) ({series(names.SERVER_CONNECTIONS)})",
                             "{{" + label(names.SERVER_ADDRESS) + "}}:{{"
                             + label(names.SERVER_PORT) + "}} {{" + POOL + "}}", "A")],
                     "short"), 24, 8)

    layout.row("Per instance")
    layout.add(panel("timeseries", "Connections in use by instance",
                     "Drill-down: connections in use per scraped process, to find the one "
                     "that holds them.",
                     [target(f"sum by (instance, {POOL}) ({used_series})",
                             "{{instance}} {{" + POOL + "}}", "A")], "short"), 12, 8)
    layout.add(panel("timeseries", "Wait time p95 by instance",
                     "Drill-down: p95 wait per process.",
                     [target(f"histogram_quantile(0.95, sum by (le, instance, {POOL}) "
                             f"(rate({prom(names.WAIT_TIME, '_bucket')}{{{SELECTOR}}}"
                             f"[{RATE}])))", "{{instance}} {{" + POOL + "}}", "A")], "s",
                     thresholds((None, "green"), (0.1, "orange"))), 12, 8)

    anchor = prom(names.COUNT)

    def variable(name: str, label_name: str, query: str) -> dict[str, Any]:
        return {"name": name, "label": label_name, "type": "query", "datasource": DATASOURCE,
                "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
                "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "sort": 1}

    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus",
                      "description": "The Prometheus that scrapes your application",
                      "type": "datasource", "pluginId": "prometheus",
                      "pluginName": "Prometheus"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""}],
        "uid": "psycopg2-pool-overview",
        "title": "psycopg2-pool: connection pools",
        "description": "Connection pools instrumented with psycopg2-pool's telemetry.instrument()"
                       " (OpenTelemetry metrics through the Prometheus exporter).",
        "tags": ["postgresql", "psycopg2", "connection-pool", "opentelemetry"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "annotations": {"list": []}, "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {"selected": False, "text": "Prometheus",
                                               "value": "${DS_PROMETHEUS}"},
             "hide": 0, "refresh": 1},
            variable("job", "Job", f"label_values({anchor}, job)"),
            variable("instance", "Instance", f'label_values({anchor}{{job=~"$job"}}, instance)'),
            variable("pool", "Pool",
                     f'label_values({anchor}{{job=~"$job", instance=~"$instance"}}, {POOL})'),
        ]},
        "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the Grafana dashboard JSON.")
    parser.add_argument("--check", action="store_true",
                        help="fail if the committed JSON differs from what would be generated")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUTPUT.read_text() != text:
            sys.exit(f"{OUTPUT} is out of date: run python3 dashboards/build.py")
        return
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()

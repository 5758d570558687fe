"""The built-in ops dashboard: one page over Redis drift/shadow/alert state and the scorers' /metrics.

    server, port = serve_dashboard("redis://127.0.0.1:6379/0", ["http://127.0.0.1:9300/metrics"])
    ...
    server.close()
"""

from monitoring.dashboard.server import DashboardServer, serve_dashboard

__all__ = ["DashboardServer", "serve_dashboard"]

"""The API's routers, one module per resource: feed (``/recommend``), events (``/events``),
ops (``/health``, ``/metrics``)."""

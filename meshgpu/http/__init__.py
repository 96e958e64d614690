"""Every node speaks HTTP: the Open Inference Protocol (KServe V2), ``/mesh/*`` resources,
Prometheus metrics and a live dashboard (docs/http-api.md). The app sees the daemon only
through small callables (:class:`~meshgpu.http.app.Sources`); the daemon's wiring builds
them (daemon/http_sources.py)."""

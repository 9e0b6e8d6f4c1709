"""Start (or join) Ray, deploy a bundle on Ray Serve, serve until told to stop, shut down.

``start_ray`` starts a local Ray sized for serving (no dashboard, a small object store: the
requests are small, and Ray Serve passes them by value) or joins a cluster at ``address``.
``deploy`` starts Ray Serve's HTTP proxy on ``host:port`` and runs the application, waiting
until every replica is up. ``serve_until_signal`` is what ``trimformer serve`` does: it blocks
until SIGINT or SIGTERM, then shuts Ray Serve down gracefully (replicas finish the requests
they hold, up to the deployment's graceful shutdown timeout) and leaves Ray.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from trimformer.errors import UsageError, first_line
from trimformer.serving.ray_app import ServeSettings, application

__all__ = ["APP_NAME", "deploy", "serve_until_signal", "shutdown", "start_ray"]

APP_NAME = "trimformer"
_OBJECT_STORE_BYTES = 128 << 20


def start_ray(
    address: str | None = None, num_cpus: float | None = None, metrics_port: int | None = None
) -> None:
    """Join the Ray cluster at ``address``, or start a local Ray with ``num_cpus`` CPUs and
    Prometheus metrics on ``metrics_port`` (Ray's metrics export port)."""
    import ray

    if address is not None:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(
                f"cannot join the Ray cluster at {address}: {first_line(exc)}; check the "
                "address (ray status on the head node prints it)"
            ) from None
        return
    options: dict[str, Any] = {}
    if metrics_port is not None:
        options["_metrics_export_port"] = metrics_port
    ray.init(
        address="local",
        num_cpus=None if num_cpus is None else max(1, round(num_cpus)),
        include_dashboard=False,
        object_store_memory=_OBJECT_STORE_BYTES,
        log_to_driver=False,
        **options,
    )


def deploy(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Ray Serve's HTTP proxy and run the bundle's application; returns its URL once
    every replica is running."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(application(settings), name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:
        raise UsageError(
            f"Ray Serve could not start the bundle's replicas: {first_line(exc)}"
        ) from None
    return f"http://{host}:{port}"


def shutdown() -> None:
    """Stop Ray Serve (replicas drain their requests first) and leave Ray."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def serve_until_signal(
    settings: ServeSettings,
    host: str,
    port: int,
    address: str | None,
    metrics_port: int | None,
    ready: Callable[[str], None],
) -> None:
    """Serve until SIGINT or SIGTERM; ``ready`` gets the URL once the replicas run."""
    start_ray(address, settings.replicas * settings.cpus_per_replica, metrics_port)
    # after ray.init, which installs its own SIGTERM handler (a stack dump and exit)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _SIGNALS}
    try:
        ready(deploy(settings, host, port))
        while not stop.wait(0.5):  # a short wait keeps the signal handlers running promptly
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutdown()


_SIGNALS = (signal.SIGINT, signal.SIGTERM)

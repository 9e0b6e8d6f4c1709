"""A bundle as a Ray Serve deployment: one Session per replica, Ray Serve's own batching.

Each replica loads the bundle once (every config preloaded, the weights held once: the config
bank) and answers ``POST /predict`` (bodies: ``serving.requests``) and ``GET /`` (what the
bundle takes). Requests go through ``@serve.batch``: a batch is split by config and by the
shapes and dtypes of the feed, each group runs as one stacked ``Session.run`` (in a thread, so
the replica keeps queueing requests meanwhile) and its rows go back to their requests. A group
shares its shapes and dtypes, so a feed the manifest refuses fails its whole group alike, with
the Session's one-line message, and never a request of another group.

Failures are answers, never a dead replica: a bad request is a 4xx with one line, a run that
fails is a 500 with one line. Ray Serve runs ``check_health`` periodically and replaces a
replica that fails it or dies; metrics (``trimformer_requests`` by config and status,
``trimformer_batch_rows``, ``trimformer_run_seconds``) go through ``ray.serve.metrics`` to
Ray's Prometheus endpoint beside Ray Serve's own ``ray_serve_*`` metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.serve.metrics import Counter, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from trimformer.errors import TrimformerError, UsageError, first_line
from trimformer.serving.requests import CONFIG_HEADER, BadRequest, BundleInputs, encode_outputs

__all__ = ["BundleServer", "ServeSettings", "application"]


@dataclass(frozen=True)
class ServeSettings:
    """How the bundle is deployed: replicas, their CPUs and threads, and batching."""

    bundle: str
    replicas: int = 1
    cpus_per_replica: float = 1.0
    threads: int | None = None  # ONNX Runtime intra-op threads per replica (None: its default)
    max_batch: int = 8  # rows per run
    batch_wait_s: float = 0.002
    max_body_bytes: int = 64 << 20
    health_check_period_s: float = 10.0
    graceful_shutdown_s: float = 20.0


def _rows(items: list[tuple[str, dict[str, np.ndarray], int]]) -> int:
    """The rows a batch of requests carries: what ``max_batch`` counts."""
    return sum(rows for _, _, rows in items)


@dataclass(frozen=True)
class _Failed:
    """A request of a batch that failed: its HTTP status and one line."""

    status: int
    message: str


class BundleServer:
    """The replica: a preloaded Session of the bundle and the HTTP handler."""

    def __init__(self, settings: ServeSettings) -> None:
        from trimformer.runtime import load

        self._settings = settings
        self._session = load(settings.bundle, threads=settings.threads, preload=True)
        self._inputs = BundleInputs.of(self._session.manifest)
        graphs = self._session.manifest["graphs"]
        self._stackable = {
            name: all(
                isinstance(spec["shape"][0], str)
                for spec in [*graphs[entry["graph"]]["inputs"], *graphs[entry["graph"]]["outputs"]]
            )
            for name, entry in self._session.configs.items()
        }
        self.run_batch.set_max_batch_size(settings.max_batch)
        self.run_batch.set_batch_wait_timeout_s(settings.batch_wait_s)
        self._requests = Counter(
            "trimformer_requests",
            description="requests answered, by config and HTTP status",
            tag_keys=("config", "status"),
        )
        self._batch_rows = Histogram(
            "trimformer_batch_rows",
            description="rows per Session.run (a batch of one config and shape)",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
            tag_keys=("config",),
        )
        self._run_seconds = Histogram(
            "trimformer_run_seconds",
            description="seconds per Session.run",
            boundaries=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10],
            tag_keys=("config",),
        )

    def check_health(self) -> None:
        """Ray Serve's periodic check: the session must still be open."""
        if self._session is None:
            raise RuntimeError("the bundle's session is closed")

    def __del__(self) -> None:
        """Ray Serve calls this when it stops the replica: release the ONNX Runtime sessions."""
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path in ("", "/info"):
            return JSONResponse(self._info())
        if path != "/predict":
            return _error(404, f"no route {request.url.path}; POST /predict or GET /")
        if request.method != "POST":
            return _error(405, "/predict takes POST with the inputs as its body")
        config = self._inputs.default
        try:
            body = await self._body(request)
            parsed = self._inputs.parse(
                request.headers.get("content-type", ""),
                body,
                request.headers.get(CONFIG_HEADER),
                request.query_params.get("config"),
            )
            config = parsed.config
            rows = self._rows_of(parsed.feed, config)
            result = await self.run_batch((config, parsed.feed, rows))
        except BadRequest as exc:
            return self._answer(config, _error(exc.status, str(exc)))
        if isinstance(result, _Failed):
            return self._answer(config, _error(result.status, result.message))
        content, media = encode_outputs(config, result, request.headers.get("accept", ""))
        return self._answer(config, Response(content, media_type=media))

    async def _body(self, request: Request) -> bytes:
        limit = self._settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(f"the body has {declared} bytes, more than {limit}; send less", 413)
        body = await request.body()
        if len(body) > limit:
            raise BadRequest(f"the body has {len(body)} bytes, more than {limit}; send less", 413)
        return body

    def _rows_of(self, feed: Mapping[str, np.ndarray], config: str) -> int:
        """The rows (batch dim) of a feed; every input must have the same count, within
        ``max_batch``."""
        counts = {int(array.shape[0]) if array.ndim else 0 for array in feed.values()}
        if len(counts) != 1 or 0 in counts:
            raise BadRequest(
                "every input needs a batch dim of the same size (add one with x[None]); got "
                + ", ".join(f"{name} {array.shape}" for name, array in feed.items())
            )
        rows = counts.pop()
        if self._stackable[config] and rows > self._settings.max_batch:
            raise BadRequest(
                f"a request carries {rows} rows, more than this server's batch of "
                f"{self._settings.max_batch}; split it"
            )
        return rows

    def _answer(self, config: str, response: Response) -> Response:
        self._requests.inc(tags={"config": config, "status": str(response.status_code)})
        return response

    def _info(self) -> dict[str, Any]:
        session = self._session
        return {
            "model": session.manifest.get("model", {}).get("id"),
            "configs": list(session.configs),
            "default_config": self._inputs.default,
            "inputs": self._inputs.dtypes,
            "image_input": self._inputs.image_input,
            "outputs": [spec.name for spec in session.outputs],
            "max_batch": self._settings.max_batch,
        }

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002, batch_size_fn=_rows)
    async def run_batch(
        self, items: list[tuple[str, dict[str, np.ndarray], int]]
    ) -> list[dict[str, np.ndarray] | _Failed]:
        """Run a batch of requests: one stacked run per config and feed signature."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, (config, feed, _) in enumerate(items):
            signature = tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feed.items()))
            key = (config, signature) if self._stackable[config] else (config, index)
            groups.setdefault(key, []).append(index)
        results: list[dict[str, np.ndarray] | _Failed] = [_Failed(500, "not run")] * len(items)
        for (config, _), members in groups.items():
            feeds = [items[i][1] for i in members]
            stacked = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
            outputs = await asyncio.to_thread(self._run, config, stacked)
            if isinstance(outputs, _Failed):
                for i in members:
                    results[i] = outputs
                continue
            start = 0
            for i in members:
                rows = items[i][2]
                results[i] = {k: v[start : start + rows] for k, v in outputs.items()}
                start += rows
        return results

    def _run(self, config: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray] | _Failed:
        started = time.perf_counter()
        try:
            outputs = self._session.run(feed, config=config)
        except UsageError as exc:
            return _Failed(400, first_line(exc))
        except TrimformerError as exc:
            return _Failed(500, first_line(exc))
        except Exception as exc:  # a replica answers every request; it never dies of one
            return _Failed(500, f"internal error: {type(exc).__name__}: {first_line(exc)}")
        tags = {"config": config}
        self._run_seconds.observe(time.perf_counter() - started, tags=tags)
        self._batch_rows.observe(next(iter(feed.values())).shape[0], tags=tags)
        return outputs


def _error(status: int, message: str) -> Response:
    return PlainTextResponse(message.splitlines()[0] + "\n", status_code=status)


def application(settings: ServeSettings) -> Any:
    """The Ray Serve application of ``settings``: the deployment, bound to its arguments."""
    deployment = serve.deployment(BundleServer, name="trimformer").options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.cpus_per_replica},
        max_ongoing_requests=max(4 * settings.max_batch, 32),
        health_check_period_s=settings.health_check_period_s,
        health_check_timeout_s=max(3 * settings.health_check_period_s, 10.0),
        graceful_shutdown_timeout_s=settings.graceful_shutdown_s,
    )
    return deployment.bind(settings)

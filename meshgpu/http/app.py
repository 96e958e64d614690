"""The HTTP app (Starlette): the Open Inference Protocol, ``/mesh/*``, ``/metrics``.

The app sees the daemon only through :class:`Sources`, a handful of callables (a status
snapshot, the task table, the catalog, infer, warm/let go of a model): it can be tested
and reasoned about without a mesh, and the daemon's wiring decides what each one means
(daemon/http_sources.py). Every request is checked against the API tokens when some are
configured (tokens.py). Bodies are read with a limit: a ``Content-Length`` above it is
refused before anything is read, a body that grows past it is cut off.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meshgpu.core.tasks.state import TASK_STATES
from meshgpu.daemon.groups import group_of
from meshgpu.errors import InputError, MeshError
from meshgpu.http.dashboard import Dashboard, asset
from meshgpu.http.metrics import InferenceStats
from meshgpu.http.models import PLATFORM, CatalogModel, ModelInfo
from meshgpu.http.tokens import TokenTable, allows
from meshgpu.http.v2 import InferRequest, ProtocolError, encode_response, parse_request
from meshgpu.tensor_types import payload_nbytes

logger = logging.getLogger("meshgpu.http")

SERVER_NAME = "meshgpu"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
"""The protocol extensions this port serves (Triton's statistics extension is not)."""
HEADER_LENGTH = "inference-header-content-length"
INLINE_CODING_BYTES = 64 << 10
"""A request body or response tensors up to this size are decoded and encoded on the
node's trio thread (well under a millisecond); larger ones in a worker thread. Measured
at concurrency 1 on a loaded 2-core machine, each hop to a worker thread and back waits
for a core twice and cost milliseconds around a 0.2 ms model (docs/benchmarks.md)."""


@dataclass(frozen=True)
class InferOutcome:
    """What a mesh task answered: its outputs, the node that ran it, and the run's time
    there when known (a direct run)."""

    outputs: dict[str, np.ndarray]
    worker: str | None
    task_id: str
    compute_s: float | None = None


class Unavailable(MeshError):
    """No live node can run the request now (answered 503)."""


class FailedForGood(MeshError):
    """The task failed for a reason that resending the request cannot fix: its input or
    its model, where it ran (answered 400, as the protocol answers a request it cannot
    serve)."""


class DeadlineExceeded(MeshError):
    """The task was not done in time: its deadline passed, or the node stopped waiting
    for it (answered 504: the node is the mesh's gateway, and the mesh did not answer in
    time)."""


@dataclass
class Sources:
    """What the app may ask of its daemon."""

    node_id: Callable[[], str]
    ready: Callable[[], bool]
    status: Callable[[], dict[str, Any]]
    tasks: Callable[[str | None], list[dict[str, Any]]]
    catalog: Callable[[], Mapping[str, CatalogModel]]
    model_info: Callable[[CatalogModel], Awaitable[ModelInfo]]
    """The model's signature, its bytes fetched to this node first if need be."""
    infer: Callable[
        [CatalogModel, dict[str, np.ndarray], Mapping[str, list[str]], float | None],
        Awaitable[InferOutcome],
    ]
    """Run one request; the third argument is its placement (``require`` / ``prefer``
    label lists, possibly empty), the fourth its deadline in seconds (the request's
    ``timeout`` parameter; None: none)."""
    load: Callable[[CatalogModel], Awaitable[None]]
    unload: Callable[[CatalogModel], Awaitable[None]]
    loaded: Callable[[CatalogModel], bool]
    targets: Callable[[], Awaitable[list[str]]]
    """``host:port`` of every live member's HTTP port (Prometheus service discovery)."""


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes (413 beyond; 400 for a bad length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise HttpError(400, f"Content-Length {declared!r} is not a number") from None
        if length > limit:
            raise HttpError(
                413, f"the body is {length} bytes, more than this node accepts ({limit})"
            )
    parts = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the body is more than this node accepts ({limit} bytes)")
            parts.append(chunk)
    except ClientDisconnect:
        raise HttpError(400, "the client went away before sending the whole body") from None
    return b"".join(parts)


def build_app(
    sources: Sources,
    stats: InferenceStats,
    registry: CollectorRegistry,
    *,
    tokens: TokenTable | None = None,
    max_body_bytes: int = 64 << 20,
    dashboard: Dashboard | None = None,
) -> Starlette:
    """The ASGI app of one node."""

    def allowed(request: Request, needed: str) -> None:
        if tokens is None:
            return
        role = tokens.role_of(request.headers.get("authorization"))
        if role is None:
            raise HttpError(401, "this node needs 'Authorization: Bearer <token>' (--api-tokens)")
        if not allows(role, needed):
            raise HttpError(403, f"a {role!r} token may not do this; it needs {needed!r}")

    def endpoint(
        needed: str,
    ) -> Callable[
        [Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]
    ]:
        def wrap(
            handler: Callable[[Request], Awaitable[Response]],
        ) -> Callable[[Request], Awaitable[Response]]:
            async def run(request: Request) -> Response:
                try:
                    allowed(request, needed)
                    return await handler(request)
                except HttpError as error:
                    return error_response(error.status, error.message)

            run.__name__ = handler.__name__
            return run

        return wrap

    def model_of(request: Request) -> CatalogModel:
        name = request.path_params["model"]
        model = sources.catalog().get(name)
        if model is None:
            raise HttpError(
                404, f"unknown model {name!r}; the catalog has {sorted(sources.catalog())}"
            )
        version = request.path_params.get("version")
        if version is not None and version != model.version:
            raise HttpError(404, f"model {name!r} has version {model.version}, not {version!r}")
        return model

    async def info_of(model: CatalogModel) -> ModelInfo:
        try:
            return await sources.model_info(model)
        except MeshError as error:
            raise HttpError(503, f"model {model.name!r} cannot be read now: {error}") from None

    @endpoint("read")
    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    @endpoint("read")
    async def ready(request: Request) -> Response:
        is_ready = sources.ready()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @endpoint("read")
    async def server_metadata(request: Request) -> Response:
        from meshgpu import __version__

        return JSONResponse(
            {
                "name": SERVER_NAME,
                "version": __version__,
                "extensions": EXTENSIONS,
                "node_id": sources.node_id(),
            }
        )

    @endpoint("read")
    async def model_metadata(request: Request) -> Response:
        model = model_of(request)
        info = await info_of(model)
        return JSONResponse(
            {
                "name": model.name,
                "versions": [model.version],
                "platform": PLATFORM,
                "inputs": info.inputs,
                "outputs": info.outputs,
                "parameters": {"sha256": model.digest},
            }
        )

    @endpoint("read")
    async def model_ready(request: Request) -> Response:
        model = model_of(request)
        is_ready = sources.ready()
        return JSONResponse(
            {"name": model.name, "ready": is_ready}, status_code=200 if is_ready else 503
        )

    async def checked_request(
        request: Request, model: CatalogModel
    ) -> tuple[InferRequest, dict[str, Any]]:
        """The parsed infer request and its checked feeds, or the error that refuses it
        before anything runs (a bad request, 400; ``infer`` counts it as a failed request
        for ``OTHER`` reasons, as Triton counts a request it fails before the model)."""
        header = request.headers.get(HEADER_LENGTH)
        try:
            header_length = None if header is None else int(header)
        except ValueError:
            raise HttpError(
                400, f"Inference-Header-Content-Length {header!r} is not a number"
            ) from None
        body = await read_body(request, max_body_bytes)
        try:
            if len(body) <= INLINE_CODING_BYTES:
                parsed = parse_request(body, header_length)
            else:
                # A worker thread: decoding a large JSON body takes seconds, during which
                # the node's trio thread would answer no probe (and be suspected).
                parsed = await trio.to_thread.run_sync(parse_request, body, header_length)
        except ProtocolError as error:
            raise HttpError(400, str(error)) from None
        info = await info_of(model)
        declared = {tensor["name"]: tensor for tensor in info.inputs}
        for name, datatype in parsed.datatypes.items():
            wanted = declared.get(name)
            if wanted is not None and wanted["datatype"] != datatype:
                raise HttpError(
                    400,
                    f"input {name!r} is {datatype}; model {model.name!r} takes "
                    f"{wanted['datatype']} {wanted['shape']}",
                )
        try:
            feeds = info.check_feeds(parsed.inputs)
        except InputError as error:
            raise HttpError(400, str(error)) from None
        if parsed.outputs is not None:  # before the run, which it would waste
            known = [tensor["name"] for tensor in info.outputs]
            for name in parsed.outputs:
                if name not in known:
                    raise HttpError(
                        400,
                        f"unknown output {name!r}; the model's outputs are {', '.join(known)}",
                    )
        return parsed, feeds

    @endpoint("infer")
    async def infer(request: Request) -> Response:
        model = model_of(request)
        try:
            parsed, feeds = await checked_request(request, model)
        except HttpError:
            stats.refused(model.name, model.version)  # refused before the run: counted
            raise
        first = next(iter(feeds.values()))
        batch = int(first.shape[0]) if first.ndim else 1
        stats.started(model.name, model.version)
        started = time.perf_counter()
        ok = False
        reason = "OTHER"  # why it failed (metrics.FAILURE_REASONS), when it does
        outcome: InferOutcome | None = None
        try:
            outcome = await sources.infer(model, feeds, parsed.placement, parsed.deadline_s)
            ok = True
        except Unavailable as error:
            reason = "REJECTED"
            raise HttpError(503, str(error)) from None
        except (InputError, FailedForGood) as error:
            reason = "BACKEND"
            raise HttpError(400, str(error)) from None
        except DeadlineExceeded as error:
            reason = "REJECTED"
            raise HttpError(504, str(error)) from None
        except MeshError as error:
            reason = "BACKEND"
            raise HttpError(500, str(error)) from None
        except trio.Cancelled:
            reason = "CANCELED"
            raise
        finally:
            if dashboard is not None:
                dashboard.infer_done(
                    model.name,
                    outcome.worker if outcome is not None else None,
                    outcome.task_id if outcome is not None else "",
                    time.perf_counter() - started,
                    ok,
                )
            stats.finished(
                model.name,
                model.version,
                ok=ok,
                batch=batch,
                total_s=time.perf_counter() - started,
                compute_s=outcome.compute_s if outcome is not None else None,
                reason=reason,
            )
        encode = functools.partial(
            encode_response,
            model.name,
            model.version,
            outcome.outputs,
            parsed,
            {
                "worker": outcome.worker or "",
                "task_id": outcome.task_id,
                "entry": sources.node_id(),
            },
        )
        try:
            if sum(map(payload_nbytes, outcome.outputs.values())) <= INLINE_CODING_BYTES:
                content, length = encode()
            else:
                content, length = await trio.to_thread.run_sync(encode)
        except ProtocolError as error:
            raise HttpError(400, str(error)) from None
        if length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(length)},
        )

    @endpoint("read")
    async def repository_index(request: Request) -> Response:
        body = await read_body(request, 1 << 16)
        ready_only = False
        if body.strip():
            try:
                document = json.loads(body)
            except ValueError as error:
                raise HttpError(400, f"the request is not valid JSON: {error}") from None
            ready_only = bool(isinstance(document, dict) and document.get("ready"))
        rows = []
        for name, model in sorted(sources.catalog().items()):
            state = "READY" if sources.loaded(model) else "UNAVAILABLE"
            if ready_only and state != "READY":
                continue
            rows.append({"name": name, "version": model.version, "state": state, "reason": ""})
        return JSONResponse(rows)

    @endpoint("admin")
    async def repository_load(request: Request) -> Response:
        model = model_of(request)
        try:
            await sources.load(model)
        except MeshError as error:
            raise HttpError(503, f"cannot load {model.name!r} here: {error}") from None
        return JSONResponse({})

    @endpoint("admin")
    async def repository_unload(request: Request) -> Response:
        model = model_of(request)
        await sources.unload(model)
        return JSONResponse({})

    @endpoint("read")
    async def mesh_status(request: Request) -> Response:
        return JSONResponse(sources.status())

    @endpoint("read")
    async def mesh_tasks(request: Request) -> Response:
        state = request.query_params.get("state")
        if state is not None and state not in TASK_STATES:
            raise HttpError(400, f"unknown task state {state!r}; one of {', '.join(TASK_STATES)}")
        return JSONResponse({"tasks": sources.tasks(state)})

    @endpoint("read")
    async def mesh_task(request: Request) -> Response:
        # A task group's member (``n-1/42:3``, what ``map`` and ``submit --group`` hand
        # out) is answered with its group's row: the table holds one entry per group.
        wanted = request.path_params["task_id"]
        group = group_of(wanted)
        for row in sources.tasks(None):
            if row["task_id"] == wanted:
                return JSONResponse(row)
            if row["task_id"] == group and int(wanted.rpartition(":")[2]) < row["members"]:
                return JSONResponse({**row, "task_id": wanted, "group": group})
        raise HttpError(404, f"no task {wanted!r} in this node's table")

    @endpoint("read")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @endpoint("read")
    async def metrics_targets(request: Request) -> Response:
        return JSONResponse([{"targets": await sources.targets(), "labels": {"job": "meshgpu"}}])

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        try:
            data, media = asset(name)
        except KeyError:
            return error_response(404, f"no such asset: {name}")
        return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})

    @endpoint("read")
    async def events(request: Request) -> Response:
        if dashboard is None:
            raise HttpError(404, "this node serves no dashboard")
        return StreamingResponse(
            dashboard.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    routes = [
        Route("/", page),
        Route("/dashboard/events", events),
        Route("/dashboard/{name}", page),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/versions/{version}", model_metadata),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
        Route("/mesh/status", mesh_status),
        Route("/mesh/tasks", mesh_tasks),
        Route("/mesh/tasks/{task_id:path}", mesh_task),
        Route("/metrics", metrics),
        Route("/metrics/targets", metrics_targets),
    ]
    app = Starlette(routes=routes)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}")

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    return app

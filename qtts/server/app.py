"""The FastAPI app: OpenAI-compatible speech, voices, a websocket for incremental text, health and metrics.

Endpoints (all under /v1 need the API key when one is set):
  POST /v1/audio/speech             OpenAI speech (speech.py)
  WS   /v1/audio/speech/stream      text in as an LLM writes it, audio out (ws.py)
  POST/GET /v1/voices, GET/DELETE /v1/voices/{id}   clone voices (voices_api.py)
  GET  /v1/models, /health, /metrics, / (a small live demo page)
"""
from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ..engine.pauses import freeze_heap
from ..engine.scheduler import Scheduler
from .metrics import RequestCounter, ServerMetrics, watch_loop_lag
from .openai import ApiError
from .state import ServerSettings, ServerState
from .voices_store import VoiceStore

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("qtts.server")


def create_app(tts, settings: ServerSettings, engine=None) -> FastAPI:
    """An app serving `tts`; it starts the engine (a new continuous-batching Engine unless one is given,
    in a child process with settings.engine_process) when it starts up and stops it when it shuts down."""
    from . import speech, voices_api, ws

    if engine is None:
        if settings.engine_process:
            from ..engine.remote import RemoteEngine as engine_type
        else:
            from ..engine.engine import Engine as engine_type
        scheduler = Scheduler(settings.max_batch, max_prefills_per_frame=settings.max_prefills_per_frame,
                              low_buffer_s=settings.low_buffer_s)
        engine = engine_type(tts.model, max_batch=settings.max_batch, max_queue=settings.max_queue,
                             chunk_frames=settings.chunk_frames, scheduler=scheduler,
                             speculate_text=settings.speculate_text)
    voices = VoiceStore(settings.voices_dir)
    started = int(time.time())
    state = ServerState(settings=settings, tts=tts, engine=engine, voices=voices,
                        metrics=ServerMetrics(engine.stats))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.warmup()  # a failure here leaves the device unusable: better not to start
        freeze_heap()  # a full collection then scans only what requests allocate
        engine.start()
        state.ready = True
        state.startup_seconds = round(time.perf_counter() - (settings.started_at or state.created_at), 1)
        log.info("ready after %.1f s", state.startup_seconds)
        loop_lag = asyncio.create_task(watch_loop_lag(state.metrics.loop_lag))
        log.info("serving %s (%s) with %s", settings.model_name, tts.model_type, tts.device)
        try:
            yield
        finally:
            loop_lag.cancel()
            gc.unfreeze()  # a process that starts another app (tests) can collect this one's garbage
            state.ready = False
            engine.stop()
            voices.close()

    app = FastAPI(title="qtts", summary="Qwen3-TTS speech server", lifespan=lifespan)
    app.state.qtts = state
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestCounter, metrics=state.metrics)
    redact_api_keys_in_uvicorn_logs()
    _add_error_handlers(app)
    authorized = [Depends(_require_api_key)]
    app.include_router(speech.router, dependencies=authorized)
    app.include_router(voices_api.router, dependencies=authorized)
    app.include_router(ws.router)  # checks the key itself: browsers cannot send headers on websockets

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 {"status": "ready"} once every graph is captured and the engine serves; 503 with "starting"
        before (orchestrators wait on it) and "engine exited" while a dead engine process is replaced."""
        if not state.ready:
            return JSONResponse({"status": "starting", "ready": False}, status_code=503)
        if not engine.alive:  # e.g. an engine process that died; a new one is starting (or failed to)
            return JSONResponse({"status": "engine exited", "ready": False}, status_code=503)
        return JSONResponse({"status": "ready", "ready": True, "model": settings.model_name,
                             "model_type": tts.model_type, "startup_seconds": state.startup_seconds,
                             **{k: v for k, v in engine.stats().items() if isinstance(v, (int, float, str))}})

    @app.get("/v1/models", dependencies=authorized)
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": started,
                                            "owned_by": "qtts", "model_type": tts.model_type,
                                            "languages": tts.languages, "voices": tts.speakers}]}

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def demo() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    return app


class BodyTimeout:
    """ASGI middleware: a request whose body stops arriving for timeout_s is answered 408 and its
    connection closed (a client that stalls mid-body would otherwise hold it forever; one that is slow
    but still sending is let be)."""

    def __init__(self, app, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_complete = False

        async def receive_in_time():
            nonlocal body_complete
            if body_complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(408, f"the request body stalled: nothing arrived for {self.timeout_s:g} s",
                               code="body_timeout", headers={"Connection": "close"}) from None
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_in_time, send)


_API_KEY_IN_QUERY = re.compile(r"(api_key=)[^&\s\"]*", re.IGNORECASE)


class _RedactApiKeys(logging.Filter):
    """Hides `api_key=` query values (websocket clients send their key that way) in log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_API_KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_api_keys_in_uvicorn_logs() -> None:
    """Install _RedactApiKeys on uvicorn's access and connection loggers (once)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactApiKeys) for f in logger.filters):
            logger.addFilter(_RedactApiKeys())


async def _require_api_key(request: Request) -> None:
    request.app.state.qtts.check_api_key(request.headers.get("authorization"))


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI's `{"error": {...}}` JSON."""

    def respond(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return respond(ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None,
                                headers=dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = str(first["loc"][-1]) if first["loc"] else None
        return respond(ApiError(400, f"invalid {param}: {first['msg']}", param, "invalid_value"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return respond(ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error"))

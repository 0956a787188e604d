"""One Serve replica: a model, its engine and the whole HTTP surface of `create_app`."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field
from ray import serve

from ..server.state import ServerSettings
from .metrics import ClusterMetrics, post_metrics


class ReplicaArgs(BaseModel):
    """What one replica needs: the model and the server settings."""

    model: str = Field(description="checkpoint folder or hub id (every node must be able to load it)")
    dtype: str | None = None
    max_len: int = 4096
    prefix_cache_mb: float = 256
    fp8_talker: bool = False
    fp8_predictor: bool = False
    kv_cache: Literal["int8", "int4"] | None = None
    engine_process: Literal["auto", "on", "off"] = "auto"
    switch_interval_us: float = 50
    server: dict[str, Any] = Field(default_factory=dict,
                                   description="ServerSettings fields: voices_dir, model_name, max_batch, ...")

    def settings(self, engine_process: bool) -> ServerSettings:
        """The settings every replica serves with; the voices folder is absolute so that all share it, and
        the API key, unless given, is $QTTS_API_KEY where the replica runs (a secret kept out of configs)."""
        from ..server.cli import default_voices_dir

        fields = {"model_name": Path(self.model).name, "api_key": os.environ.get("QTTS_API_KEY") or None,
                  **self.server, "engine_process": engine_process}
        fields["voices_dir"] = Path(fields.get("voices_dir") or default_voices_dir()).absolute()
        return ServerSettings(**fields)


@serve.ingress()  # the app is built in each replica, once its model is loaded
class SpeechReplica:
    """One engine and the whole HTTP surface; Serve runs as many as asked."""

    def __init__(self, args: ReplicaArgs, device: str):
        import torch

        from ..api import TTS

        sys.setswitchinterval(args.switch_interval_us * 1e-6)  # see `qtts serve --switch-interval-us`
        device = torch.device(device)  # "cuda": the card Ray gave this replica
        engine_process = args.engine_process == "on" or (args.engine_process == "auto" and device.type == "cuda")
        self.tts = TTS.from_pretrained(args.model, device=device, dtype=args.dtype, max_len=args.max_len,
                                       prefix_cache_mb=args.prefix_cache_mb, generator=not engine_process,
                                       fp8_talker=args.fp8_talker, fp8_predictor=args.fp8_predictor,
                                       kv_cache=args.kv_cache)
        self.settings = args.settings(engine_process)
        self.http_app = None
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        from ..server.app import create_app

        self.http_app = create_app(self.tts, self.settings)
        self.http_app.add_middleware(ClusterMetrics, replica=self.replica, own_metrics=self.own_metrics)
        self.http_app.add_middleware(ReplicaHeader, replica=self.replica)
        return self.http_app

    def own_metrics(self) -> str:
        """This replica's /metrics text."""
        return self.http_app.state.qtts.metrics.render()[0].decode()

    async def check_health(self) -> None:
        """Serve's health check: the app's own /health must answer 200, else Serve replaces this replica.
        A healthy replica also shares its metrics with the others (see metrics.py)."""
        transport = httpx.ASGITransport(app=self.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            response = await client.get("/health")
        if response.status_code != 200:
            raise RuntimeError(f"/health answered {response.status_code}: {response.text}")
        await post_metrics(self.replica, self.own_metrics())


class ReplicaHeader:
    """Names the replica that answered in an `x-qtts-replica` header (logs, debugging, tests)."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (b"x-qtts-replica", replica.encode())

    async def __call__(self, scope, receive, send):
        async def named_send(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, named_send if scope["type"] == "http" else send)

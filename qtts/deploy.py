"""Many engine replicas behind Ray Serve's HTTP proxy: one replica per GPU, or a fraction of one.

Each replica is the one-server app (`create_app`) with its own engine; Ray's proxy serves the same HTTP
surface (speech with audio and SSE streaming, the websocket, voices, models, health, metrics) and sends
each request to the less loaded of two random replicas (power-of-two choices on ongoing requests).

- `qtts serve --replicas N` starts a local Ray cluster (or joins $RAY_ADDRESS) and runs it;
- `serve run qtts.deploy:build_app model=FOLDER replicas=2`, or a Serve config file whose
  `import_path` is `qtts.deploy:build_app`, runs the same application on any Ray cluster.

A replica takes traffic once its app's start-up has warmed up its engine (Serve finishes a replica's
ASGI lifespan before routing to it); its health check is the app's own `/health`, so a replica whose
engine died is replaced. A stopping replica (scale-down, `serve.delete`, SIGTERM to `qtts serve`)
gets no new requests and lets its in-flight streams finish for up to `drain_timeout_s`.
Every replica opens the same voices folder (see voices_store.py): a voice made through one is
found by all of them at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, BackpressureConfig

from .server.state import ServerSettings

APP_NAME = "qtts"
log = logging.getLogger("qtts.deploy")


class ReplicaArgs(BaseModel):
    """What one replica needs: the model and the server settings."""

    model: str = Field(description="checkpoint folder or hub id (every node must be able to load it)")
    dtype: str | None = None
    max_len: int = 4096
    prefix_cache_mb: float = 256
    engine_process: Literal["auto", "on", "off"] = "auto"
    switch_interval_us: float = 50
    server: dict[str, Any] = Field(default_factory=dict,
                                   description="ServerSettings fields: voices_dir, model_name, max_batch, ...")

    def settings(self, engine_process: bool) -> ServerSettings:
        """The settings every replica serves with; the voices folder is absolute so that all share it."""
        fields = {"model_name": Path(self.model).name, **self.server, "engine_process": engine_process}
        fields["voices_dir"] = Path(fields.get("voices_dir") or _default_voices_dir()).absolute()
        return ServerSettings(**fields)


class DeployArgs(ReplicaArgs):
    """What `build_app` needs: the replicas' arguments and how to scale them (changing only these
    resizes a running deployment without restarting its replicas)."""

    replicas: int = Field(1, ge=1, description="replicas (the minimum when max_replicas is set)")
    max_replicas: int | None = Field(None, ge=1, description="autoscale on queue depth up to this many")
    gpus_per_replica: float = Field(1.0, ge=0, description="0.5 puts two replicas on one card; 0 runs on CPU")
    cpus_per_replica: float = Field(1.0, ge=0)
    max_ongoing_requests: int | None = Field(None, ge=1, description="streams one replica takes (default: "
                                             "max_batch); more wait at the proxy for the first free replica")
    drain_timeout_s: float = Field(120.0, gt=0, description="how long a stopping replica lets streams finish")


@serve.ingress()  # the app is built in each replica, once its model is loaded
class SpeechReplica:
    """One engine and the whole HTTP surface; Serve runs as many as asked."""

    def __init__(self, args: ReplicaArgs, device: str):
        import torch

        from .api import TTS

        sys.setswitchinterval(args.switch_interval_us * 1e-6)  # see `qtts serve --switch-interval-us`
        device = torch.device(device)  # "cuda": the card Ray gave this replica
        engine_process = args.engine_process == "on" or (args.engine_process == "auto" and device.type == "cuda")
        self.tts = TTS.from_pretrained(args.model, device=device, dtype=args.dtype, max_len=args.max_len,
                                       prefix_cache_mb=args.prefix_cache_mb, generator=not engine_process)
        self.settings = args.settings(engine_process)
        self.http_app = None

    def __serve_build_asgi_app__(self):
        from .server.app import create_app

        self.http_app = create_app(self.tts, self.settings)
        self.http_app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        return self.http_app

    async def check_health(self) -> None:
        """Serve's health check: the app's own /health must answer 200, else Serve replaces this replica."""
        import httpx

        transport = httpx.ASGITransport(app=self.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            response = await client.get("/health")
        if response.status_code != 200:
            raise RuntimeError(f"/health answered {response.status_code}: {response.text}")


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


def build_app(args: DeployArgs | dict) -> Application:
    """The Ray Serve application: `serve run qtts.deploy:build_app model=FOLDER [replicas=N ...]`, or a
    Serve config file's `import_path: qtts.deploy:build_app` with these `args`."""
    args = DeployArgs.model_validate(args)
    defaults = ServerSettings(voices_dir=Path("."))
    max_batch = int(args.server.get("max_batch", defaults.max_batch))
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": args.gpus_per_replica, "num_cpus": args.cpus_per_replica},
        "max_ongoing_requests": args.max_ongoing_requests or max_batch,
        # beyond this many waiting at a proxy, answer 429 as one server does at capacity
        "max_queued_requests": int(args.server.get("max_queue", defaults.max_queue)),
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=1),
        "graceful_shutdown_timeout_s": args.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 1.0,
        "health_check_period_s": 5.0,
    }
    if args.max_replicas and args.max_replicas > args.replicas:
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=args.replicas, max_replicas=args.max_replicas,
            target_ongoing_requests=max(1.0, 0.75 * options["max_ongoing_requests"]))
    else:
        options["num_replicas"] = args.replicas
    replica_args = ReplicaArgs(**args.model_dump(include=set(ReplicaArgs.model_fields)))
    device = "cuda" if args.gpus_per_replica > 0 else "cpu"
    return serve.deployment(SpeechReplica, name="SpeechReplica").options(**options).bind(replica_args, device)


def deploy_args(args: argparse.Namespace) -> DeployArgs:
    """DeployArgs from the `qtts serve` flags."""
    from .server.cli import server_settings

    server = dataclasses.asdict(server_settings(args, engine_process=False))
    del server["engine_process"]  # each replica decides it for its own device
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 0.0 if (args.device or "").startswith("cpu") else 1.0
    return DeployArgs(model=str(args.model), dtype=args.dtype, max_len=args.max_len,
                      prefix_cache_mb=args.prefix_cache_mb, engine_process=args.engine_process,
                      switch_interval_us=args.switch_interval_us, server=server, replicas=args.replicas,
                      max_replicas=args.max_replicas, gpus_per_replica=gpus, drain_timeout_s=args.drain_timeout_s)


def run_replicas(args: argparse.Namespace) -> None:
    """`qtts serve --replicas N`: serve on Ray until SIGINT/SIGTERM, then drain every replica and stop."""
    import ray

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    application = build_app(deploy_args(args))
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.run(application, name=APP_NAME, route_prefix="/")
        log.info("serving on http://%s:%d with %d replica(s)", args.host, args.port, args.replicas)
        stop.wait()
        log.info("draining: in-flight streams finish, new requests are refused")
        serve.delete(APP_NAME)  # returns once every replica has drained and stopped
    finally:
        ray.shutdown()  # ends the cluster if this process started it; a joined cluster's Serve stays


def _default_voices_dir() -> Path:
    from .server.cli import default_voices_dir

    return default_voices_dir()

"""`qtts serve --replicas N`: the app on a local Ray cluster (or the one at $RAY_ADDRESS) until SIGTERM."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading

from .app import APP_NAME, DeployArgs, build_app

log = logging.getLogger("qtts.deploy")


def deploy_args(args: argparse.Namespace) -> DeployArgs:
    """DeployArgs from the `qtts serve` flags."""
    from ..server.cli import server_settings

    server = dataclasses.asdict(server_settings(args, engine_process=False))
    del server["engine_process"]  # each replica decides it for its own device
    gpus = args.gpus_per_replica
    if gpus is None:
        from ..api import pick_device

        gpus = 1.0 if pick_device(args.device).type == "cuda" else 0.0
    return DeployArgs(model=str(args.model), dtype=args.dtype, max_len=args.max_len,
                      prefix_cache_mb=args.prefix_cache_mb, fp8_talker=args.fp8_talker,
                      fp8_predictor=args.fp8_predictor, kv_cache=args.kv_cache, engine_process=args.engine_process,
                      switch_interval_us=args.switch_interval_us, server=server, replicas=args.replicas,
                      max_replicas=args.max_replicas, gpus_per_replica=gpus, drain_timeout_s=args.drain_timeout_s)


def run_replicas(args: argparse.Namespace) -> None:
    """Serve on Ray until SIGINT/SIGTERM, then drain every replica (in-flight streams finish) and stop."""
    import ray
    from ray import serve

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

"""The Ray Serve application: how many replicas, what each takes, how requests reach them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, BackpressureConfig, DeploymentActorConfig

from ..server.state import ServerSettings
from .metrics import BOARD_NAME, MetricsBoard
from .replica import ReplicaArgs, SpeechReplica

APP_NAME = "qtts"


class DeployArgs(ReplicaArgs):
    """What `build_app` needs: the replicas' arguments and how to scale them (in a Serve config file,
    a deployment's own `num_replicas` / `autoscaling_config` override these and resize a running app
    without restarting its replicas)."""

    replicas: int = Field(1, ge=1, description="replicas (the minimum when max_replicas is set)")
    max_replicas: int | None = Field(None, ge=1, description="autoscale on queue depth up to this many")
    gpus_per_replica: float = Field(1.0, ge=0, description="0.5 puts two replicas on one card; 0 runs on CPU")
    cpus_per_replica: float = Field(1.0, ge=0)
    max_ongoing_requests: int | None = Field(None, ge=1, description="streams one replica takes (default: "
                                             "max_batch); more wait at the proxy for the first free replica")
    drain_timeout_s: float = Field(120.0, gt=0, description="how long a stopping replica lets streams finish")


def build_app(args: DeployArgs | dict) -> Application:
    """The Ray Serve application: `serve run qtts.deploy:build_app model=FOLDER [replicas=N ...]`, or a
    Serve config file's `import_path: qtts.deploy:build_app` with these `args`."""
    args = DeployArgs.model_validate(args)
    defaults = ServerSettings(voices_dir=Path("."))
    max_batch = int(args.server.get("max_batch", defaults.max_batch))
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": args.gpus_per_replica, "num_cpus": args.cpus_per_replica},
        # the router sends each request to the less loaded of two replicas, counting these
        "max_ongoing_requests": args.max_ongoing_requests or max_batch,
        # beyond this many waiting at a proxy, answer 429 as one server does at capacity
        "max_queued_requests": int(args.server.get("max_queue", defaults.max_queue)),
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=1),
        "graceful_shutdown_timeout_s": args.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 1.0,
        "health_check_period_s": 5.0,
        "deployment_actors": [DeploymentActorConfig(name=BOARD_NAME, actor_class=MetricsBoard)],
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

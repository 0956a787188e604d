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
found by all of them at once; /metrics answers for every replica (metrics.py).

app.py builds the application, replica.py is one replica, cli.py runs `qtts serve --replicas`.
"""
from .app import APP_NAME, DeployArgs, build_app
from .cli import run_replicas
from .replica import ReplicaArgs

__all__ = ["APP_NAME", "DeployArgs", "ReplicaArgs", "build_app", "run_replicas"]

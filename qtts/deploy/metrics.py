"""/metrics behind Ray's proxy: every live replica's metrics in one answer, each sample labelled `replica`.

Each replica posts its own /metrics text to one MetricsBoard actor (Serve keeps one per deployment) at
every health check; whichever replica answers a scrape merges its fresh text with the others' latest.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import SimpleNamespace

import ray
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from starlette.responses import Response

BOARD_NAME = "metrics"
STALE_S = 20.0  # a replica that has not posted for this long is gone (it posts every health check)
log = logging.getLogger("qtts.deploy")


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The latest /metrics text of each replica."""

    def __init__(self):
        self.texts: dict[str, tuple[float, str]] = {}

    def post(self, replica: str, text: str) -> None:
        self.texts[replica] = (time.monotonic(), text)

    def read(self) -> dict[str, str]:
        """Texts posted within STALE_S, by replica."""
        now = time.monotonic()
        self.texts = {replica: entry for replica, entry in self.texts.items() if now - entry[0] <= STALE_S}
        return {replica: text for replica, (_, text) in self.texts.items()}


def merge_metrics(texts: dict[str, str]) -> bytes:
    """One Prometheus text body from several replicas' bodies: each family once, each sample labelled."""
    families = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            labelled = [sample._replace(labels={**sample.labels, "replica": replica}) for sample in family.samples]
            if family.name in families:
                families[family.name].samples += labelled
            else:
                family.samples = labelled
                families[family.name] = family
    return generate_latest(SimpleNamespace(collect=families.values))


async def post_metrics(replica: str, text: str) -> None:
    """Put a replica's metrics on the board (a missed post only leaves older ones there)."""
    try:
        await _board().post.remote(replica, text)
    except (ray.exceptions.RayError, ValueError):
        log.warning("could not post this replica's metrics to the board", exc_info=True)


class ClusterMetrics:
    """ASGI middleware: GET /metrics answers for every live replica of the deployment."""

    def __init__(self, app, replica: str, own_metrics: Callable[[], str]):
        self.app, self.replica, self.own_metrics = app, replica, own_metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/metrics":
            return await self.app(scope, receive, send)
        others = {}
        try:
            others = await _board().read.remote()
        except (ray.exceptions.RayError, ValueError):
            log.warning("the metrics board is unavailable: /metrics shows this replica only")
        body = merge_metrics({**others, self.replica: self.own_metrics()})
        await Response(body, media_type=CONTENT_TYPE_LATEST)(scope, receive, send)


def _board():
    return serve.get_deployment_actor(BOARD_NAME)  # looked up each time: Serve may have replaced it

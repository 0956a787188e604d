"""uvicorn serving the app, with a shutdown that drains streams instead of cutting them."""
from __future__ import annotations

import uvicorn

CLOSE_CONNECTIONS_S = 5.0  # after the grace period: for streams to send their error and uploads to finish


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a gentler shutdown (SIGTERM, Ctrl-C): stop accepting connections, let the
    app's streams go on for its grace period, end those left with an error event or status (ServerState.
    drain), and only then let uvicorn close connections. A second Ctrl-C still quits at once."""

    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.qtts_state = state

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()
        await self.qtts_state.drain(self.qtts_state.settings.shutdown_grace_s, lambda: self.force_exit)
        await super().shutdown(sockets)


def serve(app, host: str, port: int, log_level: str = "info") -> None:
    """Serve a `create_app` app with uvicorn until SIGTERM or Ctrl-C, then drain it."""
    from .ws import MAX_MESSAGE_BYTES

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws_max_size=MAX_MESSAGE_BYTES,
                            timeout_graceful_shutdown=CLOSE_CONNECTIONS_S)
    DrainingServer(config, app.state.qtts).run()

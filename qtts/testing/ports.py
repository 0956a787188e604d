"""A free TCP port on 127.0.0.1, for a server a test or benchmark starts."""
import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; it stays free until someone binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

"""The Hugging Face Hub: reachable or not, known in seconds.

Offline, ``huggingface_hub`` retries each request five times with backoff before it gives up (24 s
for a benchmark, 53 s for a model, measured here) and the error then ends in a traceback. A model
or a benchmark named by its Hub id is checked first with one connection, so the user hears at once
what to do instead.
"""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlparse

__all__ = ["hub_unreachable"]


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hub cannot be reached (one TCP connection to its endpoint, ``HF_ENDPOINT``, within
    ``timeout`` seconds), or None: it can, or it is not asked (``HF_HUB_OFFLINE`` reads the local
    cache; a configured proxy is trusted to reach it)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    endpoint = urlparse(constants.ENDPOINT)
    proxies = urllib.request.getproxies()
    if endpoint.scheme in proxies or "all" in proxies:
        return None
    host = endpoint.hostname or constants.ENDPOINT
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"cannot connect to {host}:{port} ({error.strerror or error})"
    return None

"""The ingest service: ``POST /webhooks/send`` → durable queue entry → ``202 {"id"}``.

``hookline receiver`` calls :func:`run`; :func:`create_app` is the aiohttp application.
"""

from hookline.receiver.app import create_app
from hookline.receiver.main import run

__all__ = ["create_app", "run"]

"""The ingest service: ``POST /webhooks/send`` → durable queue entry → ``202 {"id"}``."""

from hookline.http import serve
from hookline.receiver.app import create_app

__all__ = ["create_app", "serve"]

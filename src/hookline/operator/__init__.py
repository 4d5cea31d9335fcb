"""The kopf operator: reconciles WebhookEndpoint resources into the Redis registry.

``hookline operator`` calls :func:`run`; see ``operator/README.md`` for deployment.
"""

from hookline.operator.main import run

__all__ = ["run"]

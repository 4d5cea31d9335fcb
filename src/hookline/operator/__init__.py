"""The kopf operator: WebhookEndpoint resources → the Redis registry, and dispatcher scaling."""

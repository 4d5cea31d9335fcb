"""The local stack: everything ``make dev`` runs on one machine, with no cluster.

* :mod:`~hookline.local.stack`      ``hookline dev``: redis-server, receiver, dispatcher, sink
* :mod:`~hookline.local.manifests`  the WebhookEndpoint manifests it loads from a folder
* :mod:`~hookline.local.sink`       the demo endpoint that checks signatures (``hookline sink``)
"""

"""hookline: a Kubernetes-native webhook relay.

The core modules (config, models, errors, registry, queue, bodies, signing, tracing,
metrics, cli) are shared by the three components in the subpackages
``receiver``, ``dispatcher`` and ``operator``. The core never imports a
component; components never import each other.
"""

__version__ = "0.1.0"

"""hookline: a Kubernetes-native webhook relay.

The core modules (config, models, errors, signing, bodies, outbound, tracing,
metrics, runtime, and the ``store`` package, the only one that talks to Redis)
are shared by the three components in the subpackages ``receiver``, ``dispatcher``
and ``operator``; ``local`` (the local stack), ``admin`` (the operator's tools) and
``cli`` sit above them. The core never imports a component; components never import
each other. ``make lint`` checks both with import-linter (contracts in pyproject.toml).
"""

__version__ = "0.1.0"

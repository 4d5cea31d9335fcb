"""The delivery workers: one pool's stream in, signed POSTs to endpoints out.

``hookline dispatcher`` calls :func:`run`.
"""

from hookline.dispatcher.main import run
from hookline.dispatcher.worker import Dispatcher

__all__ = ["Dispatcher", "run"]

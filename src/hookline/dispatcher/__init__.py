"""The delivery workers: one pool's stream in, signed POSTs to endpoints out."""

from hookline.dispatcher.worker import Dispatcher, classify

__all__ = ["Dispatcher", "classify"]

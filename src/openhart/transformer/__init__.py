"""HART's next-scale autoregressive transformer."""

from .kv_cache import KVCache
from .model import HARTTransformer, TeacherForcingOutput

__all__ = ["HARTTransformer", "KVCache", "TeacherForcingOutput"]

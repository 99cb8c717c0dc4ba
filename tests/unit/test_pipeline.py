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
    assert out.seed == 0 and out.sampling.guidance_scale == 3.0


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
    ({"prompt": "a", "guidance_scale": -1.0}, "guidance_scale must be a finite number between 0 and 1000"),
    ({"prompt": "a", "guidance_scale": float("inf")}, "guidance_scale must be a finite number between 0 and 1000"),
    ({"prompt": "a", "guidance_scale": "4.5"}, "guidance_scale must be a finite number between 0 and 1000"),
    ({"prompt": "a", "top_k": -5}, "top_k must be an integer >= 0"),
    ({"prompt": "a", "top_k": True}, "top_k must be an integer >= 0"),
    ({"prompt": "a", "top_p": 1.5}, r"top_p must be a number in \[0, 1\)"),
    ({"prompt": "a", "top_p": -0.1}, r"top_p must be a number in \[0, 1\)"),
    ({"prompt": "a", "head_temperature": float("nan")}, "head_temperature must be a finite number"),
    ({"prompt": "a", "output_type": "latent"}, "output_type must be one of"),
    ({"prompt": "a", "generator": [1, 2]}, "one torch.Generator or a list of one per image"),
    ({"prompt": None}, "no prompt given"),
    ({"prompt": ["a", "b"], "negative_prompt": ["x"]}, "one string per prompt"),
])
def test_bad_arguments(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_model_folder_without_llm_or_tokenizer(tmp_path):
    shutil.copytree(HART_TINY / "tokenizer", tmp_path / "tokenizer")
    with pytest.raises(ValueError, match="is not a model folder: expected config.json and model.safetensors "
                                         r"\(openhart's layout\) or llm/ and tokenizer/ \(the official layout\)"):
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


def test_a_model_that_names_no_text_encoder_asks_for_one(tmp_path):
    from openhart.loading import load_model, save_model

    folder = save_model(load_model(HART_TINY), tmp_path / "model")  # records no text encoder
    with pytest.raises(ValueError, match="config.json names no text encoder"):
        HARTPipeline.from_pretrained(folder)


def test_an_official_model_defaults_to_the_official_text_encoder(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # an empty cache and no network: the error names the encoder and the command that fetches it
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="mit-han-lab/Qwen2-VL-1.5B-Instruct is not in the Hugging Face "
                                         "cache .*`openhart download mit-han-lab/Qwen2-VL-1.5B-Instruct"):
        HARTPipeline.from_pretrained(HART_TINY)


def _openhart_folder(tmp_path, sampling):
    from openhart.loading import load_model, save_model

    return save_model(load_model(HART_TINY), tmp_path / "model", sampling=sampling)


def test_model_folder_defaults_are_the_pipelines_defaults(tmp_path):
    """A folder's recommended sampling settings apply unless a call says otherwise."""
    from openhart.config import SamplingConfig
    from openhart.loading import recommended_sampling

    recommended = SamplingConfig(guidance_scale=2.5, top_p=0.9, head_temperature=0.5, last_scale="consistent")
    folder = _openhart_folder(tmp_path, recommended)
    assert recommended_sampling(folder) == recommended
    pipe = HARTPipeline.from_pretrained(folder, text_encoder="random")
    assert pipe.default_sampling == recommended
    out = pipe("a red apple", seed=0)
    assert out.sampling == recommended
    told = pipe("a red apple", seed=0, guidance_scale=1.0, head_temperature=0.0, last_scale="official")
    assert (told.sampling.guidance_scale, told.sampling.head_temperature, told.sampling.last_scale) == (1.0, 0.0, "official")
    assert told.sampling.top_p == 0.9  # not told: still the folder's


def test_official_folders_and_older_openhart_folders_sample_as_the_official_code(pipe, tmp_path):
    from openhart.config import SamplingConfig
    from openhart.loading import recommended_sampling

    assert pipe.default_sampling == SamplingConfig() and pipe.default_sampling.last_scale == "official"
    assert recommended_sampling(_openhart_folder(tmp_path, None)) == SamplingConfig()


def test_converted_official_model_records_the_official_defaults(tmp_path):
    import json

    from openhart.convert.checkpoint import convert_official_checkpoint

    dst = convert_official_checkpoint(HART_TINY, tmp_path / "converted")
    recorded = json.loads((dst / "config.json").read_text())["sampling"]
    assert recorded["last_scale"] == "official" and recorded["guidance_scale"] == 4.5


def test_bad_recorded_sampling_names_the_file(tmp_path):
    import json

    from openhart.config import SamplingConfig

    folder = _openhart_folder(tmp_path, SamplingConfig())
    data = json.loads((folder / "config.json").read_text())
    data["sampling"]["last_scale"] = "sideways"
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="config.json: sampling: .*last_scale must be one of"):
        HARTPipeline.from_pretrained(folder, text_encoder="random")


def test_head_temperature_and_last_scale_arguments_are_checked(pipe):
    with pytest.raises(ValueError, match="head_temperature must be a finite number >= 0"):
        pipe("a", head_temperature=-1.0)
    with pytest.raises(ValueError, match="last_scale must be one of"):
        pipe("a", last_scale="mine")


def test_output_types_and_return_dict(pipe):
    pil = pipe("a red apple", seed=6)
    pt = pipe("a red apple", seed=6, output_type="pt")
    np_images = pipe("a red apple", seed=6, output_type="np")
    assert isinstance(pt.images, torch.Tensor) and pt.images.shape == (1, 3, 128, 128)
    assert 0 <= float(pt.images.min()) and float(pt.images.max()) <= 1
    assert np_images.images.shape == (1, 128, 128, 3) and str(np_images.images.dtype) == "float32"
    # the PIL image is the tensor rounded to 8 bits
    rounded = (pt.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy().tobytes()
    assert pil.images[0].tobytes() == rounded
    assert abs(np_images.images - pt.images.permute(0, 2, 3, 1).numpy()).max() == 0
    (images,) = pipe("a red apple", seed=6, return_dict=False)
    assert images[0].tobytes() == pil.images[0].tobytes()


def test_one_generator_per_image_makes_each_image_independent_of_the_batch(pipe):
    pair = pipe("a red apple", num_images_per_prompt=2,
                generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    alone = pipe("a red apple", generator=[torch.Generator().manual_seed(2)])
    assert pair.images[1].tobytes() == alone.images[0].tobytes()
    assert pair.images[0].tobytes() != pair.images[1].tobytes() and pair.seed is None


def test_prompt_embeds_stand_in_for_the_prompt(pipe):
    encoded, _ = pipe.encode_prompt(["a red apple"], None)
    by_text = pipe("a red apple", seed=8)
    by_embedding = pipe(prompt_embeds=encoded, seed=8)
    assert by_text.images[0].tobytes() == by_embedding.images[0].tobytes()
    assert by_embedding.prompts == ["(prompt_embeds)"]
    # a plain tensor: every token real
    T, D = encoded.features.shape[1:]
    assert len(pipe(prompt_embeds=torch.zeros(2, T, D), seed=8).images) == 2
    with pytest.raises(ValueError, match="prompt or prompt_embeds, not both"):
        pipe("a red apple", prompt_embeds=encoded)
    with pytest.raises(ValueError, match=r"prompt_embeds must have shape \(B, "):
        pipe(prompt_embeds=torch.zeros(1, T + 1, D))


def test_each_image_carries_its_metadata(pipe):
    import json

    out = pipe(["a red apple", "flag: Japan"], num_images_per_prompt=2, seed=9, negative_prompt="blurry",
               top_k=0)
    assert len(out.metadata) == 4
    for i, (meta, prompt) in enumerate(zip(out.metadata, out.prompts)):
        assert meta["prompt"] == prompt and meta["negative_prompt"] == "blurry" and meta["seed"] == "9"
        recorded = json.loads(meta["openhart"])
        assert recorded["index"] == i and recorded["num_images"] == 4 and recorded["seed"] == 9
        assert recorded["model"] == str(HART_TINY) and recorded["text_encoder"] == "random"
        assert recorded["sampling"]["top_k"] == 0


def test_compile_compiles_the_transformer_blocks_and_keeps_the_images(monkeypatch):
    # fp32: in bf16 a rounding difference may flip a sampled code, and the image with it
    eager = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random", dtype=torch.float32)
    compiled = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random", dtype=torch.float32, compile=True)
    assert all(hasattr(b.attention_input, "_torchdynamo_orig_callable") for b in compiled.model.transformer.blocks)
    a = compiled("a red apple", seed=2, output_type="np").images
    b = eager("a red apple", seed=2, output_type="np").images
    assert abs(a.astype(float) - b.astype(float)).max() <= 1 / 255 + 1e-6
    # no compiler: one clear line instead of an inductor traceback at the first call
    with monkeypatch.context() as patch:
        patch.setattr("shutil.which", lambda name: None)
        with pytest.raises(ValueError, match="needs a C.. compiler"):
            HARTPipeline.from_pretrained(HART_TINY, text_encoder="random", compile=True)
    monkeypatch.setattr("sysconfig.get_paths", lambda: {"include": "/nonexistent"})
    with pytest.raises(ValueError, match="needs the Python headers"):
        HARTPipeline.from_pretrained(HART_TINY, text_encoder="random", compile=True)

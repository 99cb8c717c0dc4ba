"""The web UI's widgets start from the model folder's recommended sampling settings, and its
requests reach the sampler with every setting the page sent."""

import dataclasses

import pytest

from openhart.config import SamplingConfig
from openhart.pipeline import HARTPipeline
from openhart.web.app import Generator, build_app
from openhart.web.limits import ServeLimits, validate_request

from ..conftest import HART_TINY

RECOMMENDED = SamplingConfig(cfg_scale=2.5, top_p=0.5, head_temperature=0.3, last_scale="consistent")


@pytest.fixture(scope="module")
def pipe():
    pipe = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random")
    pipe.default_sampling = RECOMMENDED
    return pipe


def test_widgets_start_at_the_folders_defaults(pipe, tmp_path):
    app = build_app(Generator(pipe, model="m", text_encoder="random", output_dir=tmp_path), ServeLimits())
    values = {c["props"].get("elem_id"): c["props"].get("value") for c in app.config["components"]}
    assert values["guidance"] == 2.5 and values["top-p"] == 0.5
    assert values["head-temperature"] == 0.3 and values["last-scale"] == "consistent"
    assert values["residual"] is True and values["smooth"] is True


def test_a_request_reaches_the_sampler_with_every_setting(pipe, tmp_path):
    request = validate_request(ServeLimits(), 64, prompt="red apple", negative_prompt="", seed=3, guidance=1.5,
                               top_k=0, top_p=0.0, smooth=False, head_steps=3, use_residual=True,
                               num_images=1, head_temperature=0.0, last_scale="official")
    paths, _ = Generator(pipe, model="m", text_encoder="random", output_dir=tmp_path)(request)
    from PIL import Image
    import json
    with Image.open(paths[0]) as image:
        sampling = json.loads(image.text["openhart"])["sampling"]
    expected = dataclasses.replace(RECOMMENDED, cfg_scale=1.5, top_k=None, top_p=0.0, smooth=False, head_steps=3,
                                   head_temperature=0.0, last_scale="official")
    assert sampling == json.loads(json.dumps(dataclasses.asdict(expected)))

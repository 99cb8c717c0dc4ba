"""The web UI's widgets start from the model folder's recommended sampling settings, and its
requests reach the sampler with every setting the page sent."""

import dataclasses

import pytest

from openhart.config import SamplingConfig
from openhart.pipeline import HARTPipeline
from openhart.web.app import ImageService, build_app
from openhart.web.limits import ServeLimits, validate_request

from ..conftest import HART_TINY

RECOMMENDED = SamplingConfig(guidance_scale=2.5, top_p=0.5, head_temperature=0.3, last_scale="consistent")


@pytest.fixture(scope="module")
def pipe():
    pipe = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random")
    pipe.default_sampling = RECOMMENDED
    return pipe


def test_widgets_start_at_the_folders_defaults(pipe, tmp_path):
    app = build_app(ImageService(pipe, tmp_path), ServeLimits())
    values = {c["props"].get("elem_id"): c["props"].get("value") for c in app.config["components"]}
    assert values["guidance"] == 2.5 and values["top-p"] == 0.5
    assert values["head-temperature"] == 0.3 and values["last-scale"] == "consistent"
    assert values["residual"] is True and values["smooth"] is True


def test_a_request_reaches_the_sampler_with_every_setting(pipe, tmp_path):
    request = validate_request(ServeLimits(), pipe.default_sampling, 64, prompt="red apple", negative_prompt="",
                               seed=3, guidance_scale=1.5, top_k=0, top_p=0.0, smooth=False, head_steps=3,
                               use_residual=True, num_images=1, head_temperature=0.0, last_scale="official")
    paths, _ = ImageService(pipe, tmp_path)(request)
    from PIL import Image
    import json
    with Image.open(paths[0]) as image:
        sampling = json.loads(image.text["openhart"])["sampling"]
    expected = dataclasses.replace(RECOMMENDED, guidance_scale=1.5, top_k=0, top_p=0.0, smooth=False, head_steps=3,
                                   head_temperature=0.0, last_scale="official")
    assert sampling == json.loads(json.dumps(dataclasses.asdict(expected)))


@pytest.mark.parametrize("top_k", [None, 0, 3])
def test_cli_pipeline_and_web_ui_draw_the_same_image(top_k, tmp_path):
    """One meaning of every setting: the same settings and seed give the same pixels through the
    pipeline, `openhart generate` and the web UI's request path (top-k None is the model's
    per-scale schedule, 0 is off, k keeps k codes)."""
    import torch
    from PIL import Image

    from openhart.cli import main

    pipe = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random", dtype=torch.float32)
    steps = pipe.model.config.head.sampling_steps
    direct = pipe("a red apple", seed=5, guidance_scale=2.0, top_k=top_k, head_steps=steps).images[0]

    out = tmp_path / "cli.png"
    argv = ["generate", "a red apple", "--model", str(HART_TINY), "--text-encoder", "random", "--seed", "5",
            "--guidance-scale", "2", "--head-steps", str(steps), "--dtype", "fp32", "--out", str(out), "--quiet"]
    assert main(argv + ([] if top_k is None else ["--top-k", str(top_k)])) == 0

    defaults = pipe.default_sampling
    request = validate_request(ServeLimits(), defaults, pipe.model.config.tokenizer.vocab_size,
                               prompt="a red apple", negative_prompt="", seed=5, guidance_scale=2.0, top_k=top_k,
                               top_p=defaults.top_p, smooth=defaults.smooth, head_steps=steps,
                               use_residual=defaults.use_residual, num_images=1,
                               head_temperature=defaults.head_temperature, last_scale=defaults.last_scale)
    (web,), _ = ImageService(pipe, tmp_path)(request)
    with Image.open(out) as cli_image, Image.open(web) as web_image:
        assert cli_image.tobytes() == direct.tobytes() == web_image.tobytes()
    if top_k == 3:  # the setting reached the sampler (the tiny vocabulary is below the schedule's 300)
        assert direct.tobytes() != pipe("a red apple", seed=5, guidance_scale=2.0, head_steps=steps).images[0].tobytes()


def test_served_pngs_do_not_reveal_the_servers_paths(tmp_path):
    import json

    from PIL import Image

    pipe = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random")
    assert pipe.source == str(HART_TINY)  # the CLI records the full path on the user's own machine
    request = validate_request(ServeLimits(), pipe.default_sampling, 64, prompt="red apple", negative_prompt="",
                               seed=3, guidance_scale=1.5, top_k=None, top_p=0.0, smooth=True, head_steps=1,
                               use_residual=True, num_images=1, head_temperature=0.0, last_scale="official")
    (path,), _ = ImageService(pipe, tmp_path)(request)
    with Image.open(path) as image:
        record = json.loads(image.text["openhart"])
    assert record["model"] == "hart-tiny" and str(tmp_path.parent) not in image.text["openhart"]


def test_output_folder_keeps_the_newest_pngs_and_gradio_deletes_its_copies(pipe, tmp_path):
    import os

    from openhart.web.app import KEEP_FILES

    old = []
    for i in range(KEEP_FILES + 3):
        path = tmp_path / f"openhart-old{i:03d}-00.png"
        path.write_bytes(b"png")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        old.append(path)
    request = validate_request(ServeLimits(), pipe.default_sampling, 64, prompt="red apple", negative_prompt="",
                               seed=3, guidance_scale=1.5, top_k=0, top_p=0.0, smooth=False, head_steps=2,
                               use_residual=True, num_images=2, head_temperature=0.0, last_scale="official")
    new, _ = ImageService(pipe, tmp_path)(request)
    kept = set(tmp_path.glob("openhart-*.png"))
    assert len(kept) == KEEP_FILES
    assert set(new) <= kept, "the images just made are kept"
    assert kept == set(new) | set(old[-(KEEP_FILES - 2):]), "the oldest go first"
    # Gradio serves its own copies from its cache: deleted an hour after they were made
    app = build_app(ImageService(pipe, tmp_path), ServeLimits())
    assert app.delete_cache == (600, 3600)


def test_rejected_request_is_a_gradio_error_without_a_printed_traceback(pipe, tmp_path):
    """Gradio prints the traceback of an exception raised in an event unless it is a gr.Error with
    print_exception=False: a bad request must show in the page and leave the server log clean."""
    import gradio as gr

    app = build_app(ImageService(pipe, tmp_path), ServeLimits(max_prompt_chars=10))
    (fn,) = [f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "run"]
    arguments = dict(prompt="x" * 11, negative_prompt="", seed=0, guidance_scale=4.5, num_images=1,
                     top_k=None, top_p=0.0, smooth=True, head_steps=2, use_residual=True,
                     head_temperature=1.0, last_scale="official")
    with pytest.raises(gr.Error, match="too long") as raised:
        fn(**arguments)
    assert raised.value.print_exception is False
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def _edit_handler(app):
    (fn,) = [f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "run_edit"]
    return fn


def _editor_value(tmp_path, side, painted):
    """What the page's ImageEditor sends: the uploaded image and one RGBA layer of strokes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(tmp_path / "upload.png")
    strokes = np.zeros((side, side, 4), dtype=np.uint8)
    strokes[painted] = (255, 0, 255, 255)
    Image.fromarray(strokes, mode="RGBA").save(tmp_path / "layer.png")
    return {"background": {"path": str(tmp_path / "upload.png")}, "layers": [{"path": str(tmp_path / "layer.png")}],
            "composite": None}


def test_edit_tab_inpaints_the_painted_region_and_varies(pipe, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    side = pipe.model.config.image_size
    app = build_app(ImageService(pipe, tmp_path), ServeLimits(max_images=2))
    run_edit = _edit_handler(app)
    painted = (slice(side // 4, 3 * side // 4), slice(side // 4, 3 * side // 4))
    editor = _editor_value(tmp_path, side, painted)
    arguments = dict(editor=editor, prompt="red apple", mode="inpaint", strength=0.5, dilate=0, feather=2,
                     seed=1, guidance_scale=2.0, num_images=1)
    gallery, status = run_edit(**arguments, progress=lambda *a, **k: None)
    assert status.startswith("inpaint: 1 image(s)")
    with Image.open(gallery[0][0]) as image:
        record = json.loads(image.text["openhart"])
        pixels = np.asarray(image.convert("RGB"))
    assert record["edit"]["kind"] == "inpaint" and 0.2 < record["edit"]["mask_coverage"] < 0.3
    # blended over 2 px: further out than that, the page returns the upload itself
    upload = np.asarray(Image.open(tmp_path / "upload.png").convert("RGB"))
    far = side // 4 - 3
    assert np.array_equal(pixels[:far], upload[:far]) and not np.array_equal(pixels, upload)
    gallery, status = run_edit(**dict(arguments, mode="vary", prompt="", num_images=2),
                               progress=lambda *a, **k: None)
    assert status.startswith("vary: 2 image(s)") and len(gallery) == 2


@pytest.mark.parametrize("change, message", [
    ({"editor": None}, "upload an image to edit first"),
    ({"editor": {"background": {"path": "/nonexistent/x.png"}, "layers": []}}, "cannot read"),
    ({"prompt": ""}, "prompt is empty"),
    ({"mode": "erase"}, "mode must be one of"),
    ({"strength": 2}, "strength must be between 0 and 1"),
    ({"dilate": 1000}, "dilate must be between"),
    ({"num_images": 99}, "number of images must be between"),
])
def test_edit_tab_rejects_bad_requests_with_one_message(pipe, tmp_path, change, message):
    import gradio as gr

    side = pipe.model.config.image_size
    run_edit = _edit_handler(build_app(ImageService(pipe, tmp_path), ServeLimits(max_images=2)))
    arguments = dict(editor=_editor_value(tmp_path, side, (slice(0, 8), slice(0, 8))), prompt="red apple",
                     mode="inpaint", strength=0.5, dilate=0, feather=0, seed=1, guidance_scale=2.0, num_images=1)
    with pytest.raises(gr.Error, match=message) as raised:
        run_edit(**dict(arguments, **change), progress=lambda *a, **k: None)
    assert raised.value.print_exception is False


def test_the_page_shows_the_loaded_adapters_and_pngs_record_them_without_paths(tmp_path):
    import json

    from PIL import Image

    from openhart.loading import load_model

    from .test_lora import random_adapter

    pipe = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random")
    folder = random_adapter(load_model(HART_TINY), tmp_path / "my-style")
    pipe.set_adapters([pipe.load_lora_weights(folder)], [0.75])
    (tmp_path / "out").mkdir()
    app = build_app(ImageService(pipe, tmp_path / "out"), ServeLimits())
    shown = {c["props"].get("elem_id"): c["props"].get("value") for c in app.config["components"]}["adapters"]
    assert "default_0" in shown and "scale 0.75" in shown and "my-style" in shown and str(tmp_path) not in shown
    request = validate_request(ServeLimits(), pipe.default_sampling, 64, prompt="red apple", negative_prompt="",
                               seed=3, guidance_scale=1.5, top_k=None, top_p=0.0, smooth=True, head_steps=1,
                               use_residual=True, num_images=1, head_temperature=0.0, last_scale="official")
    (path,), _ = ImageService(pipe, tmp_path / "out")(request)
    with Image.open(path) as image:
        record = json.loads(image.text["openhart"])
    assert record["adapters"] == [{"name": "default_0", "source": "my-style",
                                   "fingerprint": pipe.describe_adapters()[0]["fingerprint"], "scale": 0.75}]


def test_gradio_level_rejections_are_quiet_messages(pipe, tmp_path):
    """A request with too few values is refused by Gradio before any handler runs; it must
    reach the client as a message and leave no traceback in the server log."""
    import gradio as gr

    app = build_app(ImageService(pipe, tmp_path), ServeLimits())
    (block_fn,) = [f for f in app.fns.values() if getattr(f.fn, "__name__", "") == "run"]
    with pytest.raises(gr.Error, match="the request has 3 input values; this endpoint takes 12") as raised:
        app.validate_inputs(block_fn, ["a", "", 1])
    assert raised.value.print_exception is False
    app.validate_inputs(block_fn, [None] * 12)  # enough values: Gradio's check passes them on


@pytest.mark.parametrize("changes, message", [
    (dict(seed=10**400), "seed must be between 0 and 9223372036854775807, got a number of about 401 digits"),
    (dict(num_images=-10**5000), "number of images must be between 1 and 8"),
    (dict(prompt="a \udcff cat"), "prompt is not valid UTF-8"),
])
def test_unbounded_and_undecodable_web_values_are_one_message(pipe, tmp_path, changes, message):
    import gradio as gr

    app = build_app(ImageService(pipe, tmp_path), ServeLimits())
    (fn,) = [f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "run"]
    arguments = dict(prompt="red apple", negative_prompt="", seed=0, guidance_scale=4.5, num_images=1,
                     top_k=None, top_p=0.0, smooth=True, head_steps=2, use_residual=True,
                     head_temperature=1.0, last_scale="official")
    arguments.update(changes)
    with pytest.raises(gr.Error, match=message) as raised:
        fn(**arguments)
    assert raised.value.print_exception is False


def test_a_model_recording_settings_beyond_the_pages_limits_still_edits(tmp_path):
    """A folder may record top_p 0.995 (SamplingConfig allows it; the page caps top-p at 0.99): the
    page starts at the clamped value and the Edit tab, which sends the model's settings, works."""
    from openhart.loading import load_model, save_model

    folder = save_model(load_model(HART_TINY), tmp_path / "model", text_encoder={"kind": "random", "seed": 0},
                        sampling=dataclasses.replace(RECOMMENDED, top_p=0.995, head_temperature=3.0, top_k=10**6))
    pipe = HARTPipeline.from_pretrained(folder)
    app = build_app(ImageService(pipe, tmp_path), ServeLimits(max_images=1, max_head_steps=4))
    values = {c["props"].get("elem_id"): c["props"].get("value") for c in app.config["components"]}
    assert values["top-p"] == 0.99 and values["head-temperature"] == 2.0
    assert values["top-k"] == pipe.model.config.tokenizer.vocab_size and values["head-steps"] <= 4
    side = pipe.model.config.image_size
    gallery, status = _edit_handler(app)(
        editor=_editor_value(tmp_path, side, (slice(0, side // 2), slice(0, side // 2))), prompt="red apple",
        mode="inpaint", strength=0.5, dilate=0, feather=0, seed=1, guidance_scale=2.0, num_images=1,
        progress=lambda *a, **k: None)
    assert status.startswith("inpaint: 1 image(s)") and len(gallery) == 1


@pytest.mark.parametrize("editor", ["nan", -10**18, "\x00", [1, 2]])
def test_an_editor_value_of_another_shape_is_a_quiet_message(pipe, tmp_path, editor):
    """Gradio validates file components' values against their data model before any handler,
    even with preprocess=False (found by the long fuzz run's web class)."""
    import asyncio

    import gradio as gr

    app = build_app(ImageService(pipe, tmp_path), ServeLimits())
    (block_fn,) = [f for f in app.fns.values() if getattr(f.fn, "__name__", "") == "run_edit"]
    values = [editor, "a red apple", "vary", 0.5, 0, None, 1, 4.5, 1]
    with pytest.raises(gr.Error, match="does not have the form this endpoint takes") as raised:
        asyncio.run(app.preprocess_data(block_fn, values, None))
    assert raised.value.print_exception is False

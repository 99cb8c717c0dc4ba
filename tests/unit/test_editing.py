"""Zero-shot editing: inpainting, outpainting and variations through the generation loop."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from openhart.config import SamplingConfig
from openhart.editing import (
    blend,
    inpaint_input,
    kept_scales,
    outpaint_input,
    prepare_mask,
    token_masks,
    variation_input,
)
from openhart.pipeline import HARTPipeline
from openhart.sampling import generate

from ..conftest import HART_TINY

SIDE = 128  # the side of the tiny conformance model


@pytest.fixture(scope="module")
def pipe():
    return HARTPipeline.from_pretrained(str(HART_TINY), text_encoder="random", dtype=torch.float32)


@pytest.fixture(scope="module")
def shipped():
    return HARTPipeline.from_pretrained(dtype=torch.float32)  # the emoji model in the repository


def _image(seed=0, side=SIDE):
    """An image whose pixels are exact 8-bit levels, as an image file's are."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, side, side, generator=g) * 255).round() / 255


def _reconstruction(model, image, residual=True):
    tokens = model.tokenizer.encode(image[None] * 2 - 1)
    return (model.tokenizer.decode_tokens(tokens.indices, tokens.residual if residual else None).float() + 1) / 2


def _box_mask(side=SIDE, lo=32, hi=96):
    mask = torch.zeros(side, side)
    mask[lo:hi, lo:hi] = 1
    return mask


@pytest.mark.parametrize("use_residual", [True, False])
def test_an_all_known_mask_gives_the_reconstruction(pipe, use_residual):
    image = _image()
    out = pipe.inpaint(image, torch.zeros(SIDE, SIDE), "a red apple", seed=3, output_type="pt",
                       use_residual=use_residual)
    assert torch.equal(out.images, _reconstruction(pipe.model, image, residual=use_residual))


def test_an_all_unknown_mask_gives_exactly_the_generation(pipe):
    out = pipe.inpaint(_image(), torch.ones(SIDE, SIDE), "a red apple", seed=3, output_type="pt")
    assert torch.equal(out.images, pipe("a red apple", seed=3, output_type="pt").images)


@pytest.mark.parametrize("maskgit_iters", [1, 3])
def test_known_tokens_are_never_changed_at_any_scale(pipe, maskgit_iters):
    model = pipe.model
    edit = inpaint_input(model, _image(), _box_mask())
    T, D = model.config.transformer.context_tokens, model.config.transformer.context_dim
    context = torch.randn(2, T, D, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(T).expand(2, -1)
    out = generate(model, context, positions, SamplingConfig(maskgit_iters=maskgit_iters),
                   torch.Generator().manual_seed(0), known=edit.known)
    last = edit.known.unknown[-1]
    assert 0 < int(last.sum()) < last.numel(), "the box leaves known and unknown tokens"
    changed_somewhere = False
    for si, (codes, known, unknown) in enumerate(zip(out.indices, edit.known.indices, edit.known.unknown)):
        assert torch.equal(codes[:, ~unknown], known.expand(2, -1)[:, ~unknown]), f"scale {si}"
        changed_somewhere |= bool((codes[:, unknown] != known.expand(2, -1)[:, unknown]).any())
    assert changed_somewhere, "the unknown tokens are sampled"
    # the kept last-scale positions hold the image's own latent (codes + residual), exactly
    pK = model.config.tokenizer.patch_nums[-1]
    keep = ~edit.known.unknown[-1].reshape(pK, pK)
    assert torch.equal(out.latent[:, :, keep], edit.known.latent.expand(2, -1, -1, -1)[:, :, keep])


def test_variation_strength_maps_to_kept_scales_and_its_ends(pipe):
    K = len(pipe.model.config.tokenizer.patch_nums)
    assert [kept_scales(s, K) for s in (0, 0.5, 1)] == [K, round(K / 2), 0]
    image = _image(1)
    assert torch.equal(pipe.vary(image, 0.0, seed=1, output_type="pt").images, _reconstruction(pipe.model, image))
    assert torch.equal(pipe.vary(image, 1.0, "a red apple", seed=3, output_type="pt").images,
                       pipe("a red apple", seed=3, output_type="pt").images)
    edit = variation_input(pipe.model, image, 0.5)
    assert [bool(u.all()) for u in edit.known.unknown] == [si >= edit.details["kept_scales"] for si in range(K)]
    with pytest.raises(ValueError, match="strength must be a number between 0 and 1"):
        variation_input(pipe.model, image, 1.5)


def test_variation_without_a_prompt_is_unconditional_and_seeded(pipe):
    a = pipe.vary(_image(1), 0.5, seed=5, output_type="pt", num_images_per_prompt=2)
    b = pipe.vary(_image(1), 0.5, seed=5, output_type="pt", num_images_per_prompt=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images[0], a.images[1])
    meta = json.loads(a.metadata[0]["openhart"])
    assert a.metadata[0]["prompt"] == "" and meta["edit"]["kind"] == "vary" and meta["edit"]["strength"] == 0.5


def test_feather_zero_keeps_the_known_pixels_of_the_image(pipe):
    image, mask = _image(2), _box_mask()
    out = pipe.inpaint(image, mask, "a red apple", seed=0, feather=0, output_type="pt")
    known = mask == 0
    torch.testing.assert_close(out.images[0][:, known], image[:, known], rtol=0, atol=1e-6)
    soft = pipe.inpaint(image, mask, "a red apple", seed=0, feather=4, output_type="pt").images[0]
    torch.testing.assert_close(soft[:, :20, :20], image[:, :20, :20], rtol=0, atol=1e-6)  # far out: the image
    inside = out.images[0][:, 40:88, 40:88]
    assert torch.equal(soft[:, 40:88, 40:88], inside)  # far inside: the generation
    border = (soft[:, 30:34, 40:88] - image[:, 30:34, 40:88]).abs().sum()
    assert border > 0  # on the ramp: mixed


def test_blend_ramp_is_between_the_two():
    generated, image = torch.ones(1, 3, 16, 16), -torch.ones(1, 3, 16, 16)
    unknown = torch.zeros(16, 16, dtype=torch.bool)
    unknown[:, 8:] = True
    row = blend(generated, image, unknown, feather=2)[0, 0, 0]
    assert row[0] == 0 and row[-1] == 1 and bool((row[1:] >= row[:-1]).all()) and 0 < row[7] < 1


def test_outpainting_keeps_the_placed_image_and_generates_around_it(pipe):
    image = _image(3, side=64)
    edit = outpaint_input(pipe.model, image, (64, 0, 0, 64))  # image ends at the top right of a 128 canvas
    x, y, w, h = edit.details["placement"]
    assert (x, y, w, h) == (64, 0, 64, 64)
    assert bool(edit.unknown[64:, :].all()) and not bool(edit.unknown[:64, 64:].any())
    out = pipe.outpaint(image, "a red apple", pad=(64, 0, 0, 64), seed=0, feather=0, output_type="pt")
    want = torch.nn.functional.interpolate(image[None], size=64)  # placed at its own size
    torch.testing.assert_close(out.images[0][:, :64, 64:], want[0], rtol=0, atol=1e-6)
    assert json.loads(out.metadata[0]["openhart"])["edit"]["pad"] == [64, 0, 0, 64]
    on_canvas = outpaint_input(pipe.model, image, canvas=(64, 0, 64, 64))
    assert torch.equal(on_canvas.unknown, edit.unknown) and torch.equal(on_canvas.image, edit.image)
    with pytest.raises(ValueError, match="nothing to outpaint"):
        outpaint_input(pipe.model, image, (0, 0, 0, 0))
    with pytest.raises(ValueError, match="inside the model's 128x128 canvas"):
        outpaint_input(pipe.model, image, canvas=(100, 0, 64, 64))
    with pytest.raises(ValueError, match="not both"):
        outpaint_input(pipe.model, image, (1, 0, 0, 0), canvas=(0, 0, 64, 64))
    with pytest.raises(ValueError, match="four integers"):
        outpaint_input(pipe.model, image, (1, 2, 3))


def test_token_masks_count_a_token_unknown_when_any_of_its_area_is():
    unknown = torch.zeros(8, 8, dtype=torch.bool)
    unknown[0, 0] = True
    one, two, four, eight = token_masks(unknown, (1, 2, 4, 8))
    assert one.tolist() == [True] and two.tolist() == [True, False, False, False]
    assert int(four.sum()) == 1 and int(eight.sum()) == 1


def test_masks_and_images_are_normalised_with_notes(pipe):
    notes = []
    mask = prepare_mask(np.full((32, 32), 0.7, dtype=np.float32), (64, 64), SIDE, notes)
    assert bool(mask.all()) and any("resized to the image" in n for n in notes)
    assert any("thresholded at 0.5" in n for n in notes)
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    edit = inpaint_input(pipe.model, wide, Image.new("L", (200, 100), 0))
    assert edit.image.shape == (1, 3, SIDE, SIDE)
    assert any("200x100" in n and "center-cropped" in n for n in edit.notes)
    assert any("mask is empty" in n for n in edit.notes)
    full = inpaint_input(pipe.model, wide, Image.new("L", (200, 100), 255))
    assert any("covers the whole image" in n for n in full.notes)
    with pytest.raises(ValueError, match="2-D"):
        prepare_mask(torch.zeros(2, 3, 4, 4), (4, 4), SIDE, [])


def test_dilation_grows_the_regenerated_region(pipe):
    small = inpaint_input(pipe.model, _image(), _box_mask(lo=60, hi=68))
    grown = inpaint_input(pipe.model, _image(), _box_mask(lo=60, hi=68), dilate_pixels=8)
    assert int(grown.unknown.sum()) == 24 * 24 > int(small.unknown.sum()) == 8 * 8


@torch.no_grad()
def test_editing_runs_on_the_0p7b_architecture():
    """The released architecture (random weights, at 64 px: scales 1-4) edits like the tiny one."""
    from openhart.config import hart_0p7b
    from openhart.hart_model import HARTModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = HARTModel(hart_0p7b(64)).eval()
    image = _image(4, side=64)
    T, D = model.config.transformer.context_tokens, model.config.transformer.context_dim
    context = torch.randn(1, T, D, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(T)[None]
    sampling = SamplingConfig(head_steps=2)
    mask = torch.zeros(64, 64)
    mask[:, 32:] = 1
    edit = inpaint_input(model, image, mask)
    out = generate(model, context, positions, sampling, torch.Generator().manual_seed(0), known=edit.known)
    for codes, known, unknown in zip(out.indices, edit.known.indices, edit.known.unknown):
        assert torch.equal(codes[:, ~unknown], known[:, ~unknown])
    everything = inpaint_input(model, image, torch.ones(64, 64))
    edited = generate(model, context, positions, sampling, torch.Generator().manual_seed(0), known=everything.known)
    plain = generate(model, context, positions, sampling, torch.Generator().manual_seed(0))
    assert torch.equal(edited.images, plain.images)


def test_the_shipped_model_edits_exactly_at_both_ends_and_keeps_known_codes(shipped):
    side = shipped.model.config.image_size
    image = _image(5, side=side)
    for residual in (True, False):
        kept = shipped.inpaint(image, torch.zeros(side, side), "grinning face", seed=0, output_type="pt",
                               use_residual=residual)
        assert torch.equal(kept.images, _reconstruction(shipped.model, image, residual=residual))
    everything = shipped.inpaint(image, torch.ones(side, side), "grinning face", seed=4, output_type="pt")
    assert torch.equal(everything.images, shipped("grinning face", seed=4, output_type="pt").images)
    assert torch.equal(shipped.vary(image, 1.0, "red apple", seed=2, output_type="pt").images,
                       shipped("red apple", seed=2, output_type="pt").images)
    mask = torch.zeros(side, side)
    mask[8:40, 16:56] = 1
    edit = inpaint_input(shipped.model, image, mask)
    cond = shipped.encode_prompt(["grinning face"], None)[0]
    out = generate(shipped.model, cond.features, cond.position_ids, shipped.default_sampling,
                   torch.Generator().manual_seed(0), known=edit.known)
    for codes, known, unknown in zip(out.indices, edit.known.indices, edit.known.unknown):
        assert torch.equal(codes[:, ~unknown], known[:, ~unknown])

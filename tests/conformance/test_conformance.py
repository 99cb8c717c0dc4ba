"""Conformance with the official HART code: golden vectors of every case folder, stage by stage.

Every case is loaded through the official-layout loaders; each test compares all tensors of its
group and fails if any golden tensor of the group was left unchecked. A missing case is a failure.
"""

from __future__ import annotations

import pytest
import torch

from openhart.loading import load_tokenizer

from .golden import GoldenCase, case_dirs, case_ids

CASES = case_dirs()


@pytest.fixture(scope="module", params=CASES, ids=case_ids(CASES))
def case(request) -> GoldenCase:
    return GoldenCase.open(request.param)


@torch.no_grad()
def test_tokenizer(case: GoldenCase):
    tokenizer = load_tokenizer(case.root / "tokenizer")
    quantizer = tokenizer.quantizer
    image = case.input("tok.image").float()
    patch_nums = tokenizer.check_images(image)

    # 1. encoder and latent
    case.check("tok.encoder_out", tokenizer.encoder(image))
    tokens = tokenizer.encode(image)
    case.check("tok.latent", tokens.latent)

    # 2. codes of every scale (exact), the residual, and the last scale's input
    assert len(tokens.indices) == len(case.keys("tok.idx.")), "number of scales differs"
    for si, idx in enumerate(tokens.indices):
        case.check(f"tok.idx.{si}", idx)
    case.check("tok.residual", tokens.residual)
    case.check("tok.last_scale_input", tokens.last_scale_input)

    # 3. the sampling-time accumulator, scale by scale, from the golden codes
    f_hat = torch.zeros_like(tokens.latent)
    for si, pn in enumerate(patch_nums):
        h = quantizer.embed(case.tensors[f"tok.idx.{si}"], pn)
        f_hat = quantizer.add_scale(f_hat, h, si, patch_nums)
        case.check(f"tok.fhat_cumulative.{si}", f_hat)
    case.check("tok.fhat_discrete", tokenizer.tokens_to_latent(tokens.indices))

    # 4. both decode paths and the teacher-forcing input
    case.check("tok.decoded_from_latent", tokenizer.decode_latent(tokens.latent))
    case.check("tok.decoded_from_discrete", tokenizer.decode_tokens(tokens.indices))
    case.check("tok.var_input", tokenizer.teacher_forcing_input(tokens.indices))

    case.assert_covered("tok.")

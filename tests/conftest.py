from pathlib import Path

import pytest
import torch

from openhart.config import tokenizer_tiny
from openhart.tokenizer import HybridTokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HART_TINY = FIXTURES / "conformance" / "hart-tiny"


@pytest.fixture
def tiny_tokenizer() -> HybridTokenizer:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tokenizer = HybridTokenizer(tokenizer_tiny()).eval()
    # Spread the codebook so that codes matter at the scale of random latents.
    with torch.no_grad():
        tokenizer.quantizer.codebook.weight.mul_(3.0)
    return tokenizer


@pytest.fixture
def tiny_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 64, 64, generator=g) * 2 - 1

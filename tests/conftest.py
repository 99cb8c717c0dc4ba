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


@pytest.fixture
def tiny_model():
    from openhart.config import hart_tiny
    from openhart.hart_model import HARTModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = HARTModel(hart_tiny()).eval()
        with torch.no_grad():
            model.tokenizer.quantizer.codebook.weight.mul_(3.0)
            for p in model.head.parameters():  # the default init zeroes the output layer
                p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def tiny_context():
    g = torch.Generator().manual_seed(2)
    context = torch.randn(2, 6, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    positions = torch.cumsum(mask.long(), 1) - 1
    return context, positions

"""Teacher-forced code accuracy of the transformer: how often its most likely code is the image's.

Given the ground-truth codes of every scale, the transformer sees the true coarser scales
(teacher forcing, as in training) and predicts each token's code. Top-1 accuracy is reported at
the last scale, which carries most of the tokens and all the fine structure, and over all
scales. Accuracy averaged over all scales flatters a model: the coarse scales are easy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tokenizer.quantizer import MultiScaleQuantizer
from ..transformer.model import HARTTransformer


@torch.no_grad()
def teacher_forced_accuracy(transformer: HARTTransformer, quantizer: MultiScaleQuantizer,
                            codes: Sequence[torch.Tensor], context_BTD: torch.Tensor,
                            position_ids_BT: torch.Tensor, *, batch_size: int = 64) -> dict[str, float]:
    """Top-1 accuracy of the teacher-forced predictions.

    Args:
        codes: ground-truth codes of each scale, scale si (N, pn_si**2); their sides must be a
            prefix of the transformer's scales.
        context_BTD, position_ids_BT: the text features of the N examples and their positions.
    Returns:
        {"last_scale_top1", "all_scales_top1"}, fractions in [0, 1].
    """
    patch_nums = tuple(round(c.shape[1] ** 0.5) for c in codes)
    slices = transformer.scale_slices(patch_nums)
    dtype, device = transformer.head.weight.dtype, transformer.head.weight.device
    correct_last = correct_all = 0
    for start in range(0, len(context_BTD), batch_size):
        rows = slice(start, start + batch_size)
        batch_codes = [c[rows].to(device) for c in codes]
        inputs = quantizer.teacher_forcing_input(batch_codes, patch_nums)
        out = transformer(context_BTD[rows].to(device, dtype), position_ids_BT[rows].to(device),
                          inputs.to(dtype), patch_nums=patch_nums)
        hits = out.logits.argmax(dim=-1) == torch.cat(batch_codes, dim=1)
        correct_last += int(hits[:, slices[-1]].sum())
        correct_all += int(hits.sum())
    n = len(context_BTD)
    return {"last_scale_top1": correct_last / (n * patch_nums[-1] ** 2),
            "all_scales_top1": correct_all / (n * sum(pn * pn for pn in patch_nums))}

"""Prompt faithfulness by retrieval: does a generated image find the picture it is named for?

Each generated image is compared, by cosine similarity of Inception pool features, with every
image of a gallery that holds the caption's own image among many others (for the emoji set: all
~3,800 emoji). The rank of the caption's own image tells whether the model drew *that* picture
and not just something of the right kind; top-1 and top-5 rates are reported, with the chance
rates 1/M and 5/M of a gallery of M images.

Retrieval is reported twice: strict (only the caption's own image counts) and grouped, where any
image of the same group counts: for the emoji, the skin-tone variants of one person or gesture,
which share their name (`variant_groups`). Grouped, a drawn "waving hand: dark skin tone" that is
nearest to the medium-skin-tone hand is a hit; strict, it is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.emoji import base_caption


def variant_groups(captions: list[str]) -> torch.Tensor:
    """(M,) group ids of gallery captions: equal for captions that differ only in skin tones."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(base_caption(c), len(ids)) for c in captions], dtype=torch.long)


def retrieval_ranks(queries_ND: torch.Tensor, gallery_MD: torch.Tensor, targets_N: torch.Tensor,
                    groups_M: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each query's target among the gallery, by cosine similarity.

    The rank counts the gallery images strictly more similar than the target, so a tie with
    an identical-looking image does not count against the query. With `groups_M`, the target is
    the most similar image of the target's group, and only images of other groups count.

    Args:
        queries_ND: features of the generated images.
        gallery_MD: features of the gallery images.
        targets_N: index into the gallery of each query's own image.
        groups_M: group id of each gallery image (`variant_groups`), or None for strict ranks.
    Returns:
        (N,) int64 ranks; 0 means the target (or, grouped, one of its group) is the most similar.
    """
    if queries_ND.shape[1] != gallery_MD.shape[1]:
        raise ValueError(f"feature widths differ: {queries_ND.shape[1]} vs {gallery_MD.shape[1]}")
    if len(targets_N) != len(queries_ND):
        raise ValueError(f"{len(queries_ND)} queries but {len(targets_N)} targets")
    if len(targets_N) and not 0 <= int(targets_N.min()) <= int(targets_N.max()) < len(gallery_MD):
        raise ValueError(f"target indices must lie in [0, {len(gallery_MD)})")
    similarity_NM = F.normalize(queries_ND.double(), dim=1) @ F.normalize(gallery_MD.double(), dim=1).T
    if groups_M is None:
        target_N = similarity_NM.gather(1, targets_N[:, None].long())
        return (similarity_NM > target_N).sum(dim=1)
    if groups_M.shape != (len(gallery_MD),):
        raise ValueError(f"{len(gallery_MD)} gallery images but {tuple(groups_M.shape)} group ids")
    same_NM = groups_M[None, :] == groups_M[targets_N.long()][:, None]
    target_N = similarity_NM.masked_fill(~same_NM, float("-inf")).amax(dim=1, keepdim=True)
    return ((similarity_NM > target_N) & ~same_NM).sum(dim=1)


def retrieval_rates(ranks_N: torch.Tensor, gallery_size: int, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ..., "chance_top1": ..., "chance_top5": ...} as fractions."""
    rates = {}
    for k in ks:
        rates[f"top{k}"] = float((ranks_N < k).double().mean())
        rates[f"chance_top{k}"] = min(k, gallery_size) / gallery_size
    return rates

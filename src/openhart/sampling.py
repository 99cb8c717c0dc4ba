"""Text-to-image sampling with HART, readable top to bottom (paper sections 3.2-3.3; the official
sampler's conventions are in docs/official-behaviour.md).

1. Double the batch for classifier-free guidance: [prompt ; unconditional] text features.
2. Predict the codes scale by scale with the KV cache. Scale 0 is read at the last text slot.
   Guided logits (1 + t) * cond - t * uncond with t = cfg * si / (K - 1); top-k / top-p; one
   multinomial draw; optional Gumbel smoothing of the code embedding; accumulate f_hat and
   downsample it to the next scale's input.
3. The last scale: MaskGIT iterations (one by default) predict its codes, and the residual
   diffusion head samples the continuous residual of every predicted token, conditioned on the
   token's hidden state and code. `sampling.last_scale` says which embedding the residual is
   added to: the official sampler's smoothed embedding of a second draw, or (openhart's models)
   exactly the code the head was conditioned on.
4. Decode f_hat + last codes + residual with the tokenizer to pixels in [0, 1].

Editing (zero-shot inpainting, outpainting, variations) runs the same loop with `KnownTokens`:
after each draw the tokens that the image fixes are put back, and the last scale samples only
the others.

Every random draw comes from the one `generator` argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from .config import SamplingConfig
from .diffusion.sampler import DiffusionNoise, sample_residual
from .diffusion.schedule import DiffusionSchedule
from .hart_model import HARTModel
from .transformer.kv_cache import KVCache

# Gumbel-softmax temperature of the smoothed code embedding: max(0.27 (1 - 0.95 r), 0.005),
# r = si / (K - 1) (MaskGIT-style annealing in the official sampler).
GUMBEL_TAU_START = 0.27
GUMBEL_TAU_DECAY = 0.95
GUMBEL_TAU_MIN = 0.005


@dataclass(frozen=True)
class ScaleRecord:
    """What one step of the scale loop produced (for progress display, timing and stage-by-stage
    tests).

    `stage` is "codes" once a scale's codes are drawn (at the last scale, once per MaskGIT round)
    and "residual" once the residual head has sampled that round's residuals. `hidden` is the
    last-block output of the doubled batch; `logits` the guided ones (B, l, V); `h` the code
    embedding map (B, Cv, pn, pn) (last scale: the round's tokens, codes + residual once the
    residual is in, (B, n, Cv)).
    """

    si: int
    stage: str
    hidden: torch.Tensor
    logits: torch.Tensor
    indices: torch.Tensor
    h: torch.Tensor
    f_hat: torch.Tensor | None = None
    next_map: torch.Tensor | None = None
    diffusion_cond: torch.Tensor | None = None
    residual: torch.Tensor | None = None


class NonFiniteOutput(ValueError):
    """The model produced NaN or infinite values while sampling: broken weights or config."""


@dataclass
class SampleOutput:
    """Attributes:
        images: (B, 3, H, W) in [0, 1], fp32.
        latent: final f_hat (B, Cv, pK, pK) fed to the decoder.
        indices: codes of every scale, scale si (B, pn**2).
    """

    images: torch.Tensor
    latent: torch.Tensor
    indices: list[torch.Tensor]


@dataclass(frozen=True)
class KnownTokens:
    """Tokens that an edit takes from an image instead of sampling them (zero-shot inpainting,
    outpainting and variations; `openhart.editing` builds them).

    Attributes:
        indices: the image's codes per scale, (1 or B, pn**2) each.
        unknown: per scale, (pn**2,) bool, True where the token is sampled; one mask for the batch.
        latent: the image's latent as its codes and residual give it, (1 or B, Cv, pK, pK): the
            final latent keeps it at the known last-scale positions (residual on).
        discrete: the latent of its codes alone (residual off).
    """

    indices: list[torch.Tensor]
    unknown: list[torch.Tensor]
    latent: torch.Tensor
    discrete: torch.Tensor

    def check(self, batch: int, patch_nums: tuple[int, ...]) -> None:
        if len(self.indices) != len(patch_nums) or len(self.unknown) != len(patch_nums):
            raise ValueError(f"known tokens must cover the {len(patch_nums)} scales being sampled, got "
                             f"{len(self.indices)} code maps and {len(self.unknown)} masks")
        for si, (idx, unknown, pn) in enumerate(zip(self.indices, self.unknown, patch_nums)):
            if idx.shape[0] not in (1, batch) or idx.shape[1:] != (pn * pn,) or unknown.shape != (pn * pn,):
                raise ValueError(f"known tokens of scale {si} must be (1 or {batch}, {pn * pn}) codes and a "
                                 f"({pn * pn},) mask, got {tuple(idx.shape)} and {tuple(unknown.shape)}")

    def keep(self, si: int, idx_Bl: torch.Tensor, h_BlCv: torch.Tensor,
             codebook_VC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampled codes and embeddings of scale si with the known tokens put back."""
        unknown, known = self.unknown[si], self.indices[si]
        return (torch.where(unknown, idx_Bl, known),
                torch.where(unknown[:, None], h_BlCv, F.embedding(known, codebook_VC).to(h_BlCv.dtype)))

    def keep_latent(self, f_hat_BChw: torch.Tensor, with_residual: bool) -> torch.Tensor:
        """The final latent with the image's own at the known last-scale positions.

        Earlier scales' sampled tokens reach known positions through the upsampling and Phi, so
        adding the image's codes and residual there would not give back the image's latent;
        putting the latent back does, exactly."""
        side = f_hat_BChw.shape[-1]
        target = (self.latent if with_residual else self.discrete).to(f_hat_BChw.dtype)
        return torch.where(self.unknown[-1].reshape(side, side), f_hat_BChw, target)


@dataclass
class _Run:
    """What every scale of one guided generation shares: the doubled batch's text condition and
    positions, its KV cache, the scales, the settings, the random sources and the hook."""

    cond_2BTC: torch.Tensor
    position_ids: torch.Tensor
    cache: KVCache
    patch_nums: tuple[int, ...]
    sampling: SamplingConfig
    generator: torch.Generator | None
    diffusion_noise: DiffusionNoise | None
    on_scale: Callable[[ScaleRecord], None]
    known: KnownTokens | None


# Longer than ~60 lines on purpose: the sampling loop reads top to bottom in one function (steps 1-4).
@torch.no_grad()
def generate(model: HARTModel, context_BTD: torch.Tensor, position_ids_BT: torch.Tensor,
             sampling: SamplingConfig, generator: torch.Generator | None = None, *,
             uncond_context_BTD: torch.Tensor | None = None,
             uncond_position_ids_BT: torch.Tensor | None = None,
             diffusion_noise: DiffusionNoise | None = None,
             on_scale: Callable[[ScaleRecord], None] | None = None,
             patch_nums: tuple[int, ...] | None = None,
             known: KnownTokens | None = None) -> SampleOutput:
    """Generate images from text features.

    Args:
        context_BTD: text encoder features (B, T, D), padded slots included.
        position_ids_BT: their position ids (cumsum(mask) - 1).
        sampling: guidance, top-k/top-p, smoothing, head steps, MaskGIT iterations.
        generator: source of every random draw (same generator state and device, same image).
        uncond_context_BTD, uncond_position_ids_BT: the unconditional (negative) branch; zeros
            with zero positions by default, as the official sampler does.
        diffusion_noise: explicit noise for the residual head (tests); drawn from `generator`
            otherwise.
        on_scale: called with a `ScaleRecord` after each scale's codes and each residual.
        patch_nums: a prefix of the model's scales, to generate at a lower resolution.
        known: tokens kept from an image (editing): after each scale's draw the known tokens
            are put back before f_hat accumulates them, the last scale samples only the unknown
            ones, and the final latent keeps the image's own at the known positions.
    """
    transformer, quantizer = model.transformer, model.tokenizer.quantizer
    patch_nums = transformer.check_patch_nums(patch_nums)
    K, B = len(patch_nums), context_BTD.shape[0]
    _check_steps(model, sampling, patch_nums)
    if known is not None:
        known.check(B, patch_nums)
    dtype = transformer.head.weight.dtype
    codebook = quantizer.codebook.weight

    # 1. the doubled batch [cond ; uncond] and its prefix
    default_uncond = uncond_context_BTD is None
    if default_uncond:
        uncond_context_BTD = torch.zeros_like(context_BTD)
        uncond_position_ids_BT = torch.zeros_like(position_ids_BT)
    context = torch.cat([context_BTD, uncond_context_BTD]).to(dtype)
    position_ids = torch.cat([position_ids_BT, uncond_position_ids_BT])
    cond_2BTC = transformer.embed_context(context)
    run = _Run(cond_2BTC=cond_2BTC, position_ids=position_ids, patch_nums=patch_nums, sampling=sampling,
               cache=transformer.new_cache(2 * B, context.device, dtype, patch_nums), generator=generator,
               diffusion_noise=diffusion_noise, on_scale=on_scale or _ignore, known=known)
    x_2BlC = cond_2BTC + transformer.level_embedding(0)  # scale 0's input is the text prefix: l = T
    rope = transformer.text_rope(position_ids)
    f_hat = codebook.new_zeros(B, codebook.shape[1], patch_nums[-1], patch_nums[-1])
    indices = []

    # 2. scales 0 .. K-2
    for si in range(K - 1):
        if si == 0:  # the default unconditional prefix is T identical tokens: computed as one (exact)
            hidden = transformer.forward_prefix(x_2BlC, rope, run.cache, uncond_is_uniform=default_uncond)
            readout = hidden[:, -1:]  # scale 0 is read at the last text slot
        else:
            hidden = readout = transformer.forward_scale(x_2BlC, rope, run.cache)
        logits = guided_logits(transformer.logits(readout, cond_2BTC), sampling.guidance_at(si, K))
        idx_Bl, h_BlCv = select_codes(logits, codebook, sampling, si, sampling.progress_at(si, K), generator)
        if known is not None:
            idx_Bl, h_BlCv = known.keep(si, idx_Bl, h_BlCv, codebook)
        h_BChw = rearrange(h_BlCv, "b (h w) c -> b c h w", h=patch_nums[si])
        f_hat, next_map = quantizer.next_scale_input(si, f_hat, h_BChw, patch_nums)
        indices.append(idx_Bl)
        run.on_scale(ScaleRecord(si=si, stage="codes", hidden=hidden, logits=logits, indices=idx_Bl,
                                 h=h_BChw, f_hat=f_hat, next_map=next_map))
        next_BlCv = rearrange(next_map, "b c h w -> b (h w) c")
        x_2BlC = transformer.embed_scale_input(next_BlCv, si + 1).repeat(2, 1, 1)
        rope = transformer.scale_rope(si + 1, position_ids, patch_nums)

    # 3. the last scale: MaskGIT over its tokens, plus the residual diffusion
    tokens, last_idx = sample_last_scale(model, run, x_2BlC)
    indices.append(last_idx)
    f_hat = f_hat + rearrange(tokens, "b (h w) c -> b c h w", h=patch_nums[-1])
    if known is not None:
        f_hat = known.keep_latent(f_hat, sampling.use_residual)
    # the cache is 2.9 GB at 1024 px in bf16: free it before the decoder's activations take
    # their place, so that the two never add up in the peak
    del run, x_2BlC, hidden, readout, logits

    # 4. decode
    images = (model.tokenizer.decode_latent(f_hat).float() + 1) / 2
    return SampleOutput(images=images, latent=f_hat, indices=indices)


def sample_last_scale(model: HARTModel, run: _Run, x_2BlC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict the last scale's codes (and residuals) in `maskgit_iters` rounds, over its
    unknown tokens when editing (all of them otherwise).

    Returns:
        tokens (B, l, Cv): code embedding (+ residual) of every position; codes (B, l).
    """
    transformer, head, codebook = model.transformer, model.head, model.tokenizer.quantizer.codebook
    sampling, K = run.sampling, len(run.patch_nums)
    guidance, ratio = sampling.guidance_at(K - 1, K), sampling.progress_at(K - 1, K)
    B, l, Cv = x_2BlC.shape[0] // 2, x_2BlC.shape[1], codebook.weight.shape[1]
    tokens = x_2BlC.new_zeros(B, l, Cv, dtype=codebook.weight.dtype)
    if run.known is None:
        codes = torch.zeros(B, l, dtype=torch.long, device=x_2BlC.device)
        sampled_l = torch.arange(l, device=x_2BlC.device)
    else:  # the known positions keep their codes here, and their latent in `generate`
        codes = run.known.indices[-1].expand(B, -1).clone()
        sampled_l = run.known.unknown[-1].nonzero().flatten()
    schedule = DiffusionSchedule.cosine(head.config.num_train_timesteps,
                                        sampling.head_steps or head.config.sampling_steps)
    n = len(sampled_l)
    rounds = maskgit_rounds(B, n, min(sampling.maskgit_iters, n), run.generator, x_2BlC.device) if n else []
    for order_Bn in rounds:
        positions_Bn = sampled_l[order_Bn]
        both = positions_Bn.repeat(2, 1)
        x = torch.gather(x_2BlC, 1, both[..., None].expand(-1, -1, x_2BlC.shape[-1]))
        hidden = transformer.forward_scale(x, transformer.scale_rope(K - 1, run.position_ids, run.patch_nums,
                                                                     both), run.cache)
        logits = guided_logits(transformer.logits(hidden, run.cond_2BTC), guidance)
        idx_Bn, h_BnCv = select_last_scale_codes(logits, codebook.weight, sampling, K - 1, ratio,
                                                 run.generator)
        run.on_scale(ScaleRecord(si=K - 1, stage="codes", hidden=hidden, logits=logits, indices=idx_Bn,
                                 h=h_BnCv))
        if sampling.use_residual:
            diffusion_cond = transformer.diffusion_condition(hidden, codebook(idx_Bn).repeat(2, 1, 1))
            residual = sample_residual(head, diffusion_cond.flatten(0, 1), schedule, guidance=guidance,
                                       generator=run.generator, temperature=sampling.head_temperature,
                                       noise=run.diffusion_noise).reshape(B, -1, Cv)
            h_BnCv = h_BnCv + residual.to(h_BnCv.dtype)
            run.on_scale(ScaleRecord(si=K - 1, stage="residual", hidden=hidden, logits=logits,
                                     indices=idx_Bn, h=h_BnCv, diffusion_cond=diffusion_cond,
                                     residual=residual))
        tokens.scatter_(1, positions_Bn[..., None].expand(-1, -1, Cv), h_BnCv)
        codes.scatter_(1, positions_Bn, idx_Bn)
    return tokens, codes


def _check_steps(model: HARTModel, sampling: SamplingConfig, patch_nums: tuple[int, ...]) -> None:
    """The settings that depend on the model: head steps and MaskGIT rounds within its bounds."""
    trained = model.config.head.num_train_timesteps
    if sampling.head_steps is not None and sampling.head_steps > trained:
        raise ValueError(f"head_steps ({sampling.head_steps}) cannot exceed the {trained} steps the "
                         f"residual head was trained with")
    if sampling.maskgit_iters > patch_nums[-1] ** 2:
        raise ValueError(f"maskgit_iters ({sampling.maskgit_iters}) cannot exceed the "
                         f"{patch_nums[-1] ** 2} tokens of the last scale")


def _ignore(record: ScaleRecord) -> None:
    pass


def per_scale(callback: Callable[[int], None]) -> Callable[[ScaleRecord], None]:
    """An `on_scale` hook that calls `callback(si)` once per scale: on its first "codes" record,
    not again for further MaskGIT rounds or for the residual (progress bars)."""
    last = [None]

    def on_scale(record: ScaleRecord) -> None:
        if record.stage == "codes" and record.si != last[0]:
            callback(record.si)
        last[0] = record.si

    return on_scale


def maskgit_rounds(B: int, l: int, iterations: int, generator: torch.Generator | None,
                   device: torch.device) -> list[torch.Tensor]:
    """Token positions (B, n_round) predicted in each MaskGIT round, raster-ordered per round.

    Round k leaves floor(l * cos(pi/2 * (k+1) / iterations)) tokens (at least one, while any
    remain) for later rounds, following a random order per sample; one round predicts all.
    """
    if iterations == 1:
        return [torch.arange(l, device=device).expand(B, -1)]
    rng_device = generator.device if generator is not None else device
    orders = torch.stack([torch.randperm(l, generator=generator, device=rng_device)
                          for _ in range(B)]).to(device)
    masked, rounds = l, []
    for step in range(iterations):
        keep = math.floor(l * math.cos(math.pi / 2 * (step + 1) / iterations))
        keep = 0 if step == iterations - 1 else max(1, min(masked - 1, keep))
        positions = orders[:, keep:masked]
        rounds.append(positions.sort(dim=1).values)
        masked = keep
    return rounds


def guided_logits(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """(1 + t) * cond - t * uncond over the two halves of the batch."""
    cond, uncond = logits_2BlV.chunk(2)
    return (1 + t) * cond - t * uncond


def filter_logits(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """A copy of the logits with codes outside the top-k / top-p set at -inf."""
    V = logits_BlV.shape[-1]
    if 0 < top_k < V:
        kth = logits_BlV.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        logits_BlV = logits_BlV.masked_fill(logits_BlV < kth, -math.inf)
    if top_p > 0:
        sorted_logits, order = logits_BlV.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        remove[..., -1:] = False  # always keep the most likely code
        logits_BlV = logits_BlV.masked_fill(remove.scatter(-1, order, remove), -math.inf)
    return logits_BlV


def select_codes(logits_BlV: torch.Tensor, codebook_VC: torch.Tensor, sampling: SamplingConfig,
                 si: int, ratio: float, generator: torch.Generator | None, *,
                 smooth: bool | None = None, gumbel_code: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one code per token and its embedding (Gumbel-smoothed when `smooth`).

    The code is a multinomial draw. With smoothing, the embedding mixes the codebook with the
    Gumbel-softmax weights of a second draw, as the official sampler does; `gumbel_code` then
    returns that second draw's code (the argmax of its perturbed logits) instead.

    Args:
        smooth: Gumbel smoothing of the embedding (default `sampling.smooth`).
    Returns:
        codes (B, l) int64, embeddings (B, l, Cv) in the codebook's dtype.
    """
    B, l, V = logits_BlV.shape
    smooth = sampling.smooth if smooth is None else smooth
    filtered = filter_logits(logits_BlV, sampling.top_k_at(si), sampling.top_p)
    probs = filtered.softmax(dim=-1).reshape(-1, V)
    if not bool(torch.isfinite(probs).all()):  # multinomial would fail with an opaque error
        raise NonFiniteOutput(f"the code probabilities of scale {si} are NaN or infinite")
    idx_Bl = torch.multinomial(probs, 1, generator=generator).reshape(B, l)
    if not smooth:
        return idx_Bl, F.embedding(idx_Bl, codebook_VC)
    tau = max(GUMBEL_TAU_START * (1 - ratio * GUMBEL_TAU_DECAY), GUMBEL_TAU_MIN)
    gumbels = -torch.empty_like(filtered).exponential_(generator=generator).log()
    perturbed = filtered * (1 + ratio) + gumbels
    embedding = ((perturbed / tau).softmax(dim=-1) @ codebook_VC.float()).to(codebook_VC.dtype)
    return (perturbed.argmax(dim=-1) if gumbel_code else idx_Bl), embedding


def select_last_scale_codes(logits_BlV: torch.Tensor, codebook_VC: torch.Tensor,
                            sampling: SamplingConfig, si: int, ratio: float,
                            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_codes` at the last scale, as `sampling.last_scale` asks.

    Returns the code that conditions the residual head and the embedding the residual is added
    to: the official pair (a code and the smoothed embedding of another draw), the consistent
    one (a code and exactly its codebook vector) or the Gumbel one (the smoothed draw's code).
    With the residual off, "consistent" still means the plain codebook vector of the code.
    """
    if sampling.last_scale == "consistent":
        return select_codes(logits_BlV, codebook_VC, sampling, si, ratio, generator, smooth=False)
    return select_codes(logits_BlV, codebook_VC, sampling, si, ratio, generator,
                        gumbel_code=sampling.last_scale == "gumbel")

"""Conformance with the official HART code: golden vectors of every case folder, stage by stage.

Every case is loaded through the official-layout loaders; each test compares all tensors of its
group and fails if any golden tensor of the group was left unchecked. A missing case is a failure.
"""

from __future__ import annotations

import pytest
import torch

from openhart import attention
from openhart.config import SamplingConfig
from openhart.diffusion import DiffusionNoise, DiffusionSchedule
from openhart.diffusion.sampler import guided_prediction, posterior_step, reverse_steps
from openhart.loading import load_model, load_tokenizer
from openhart.sampling import generate
from openhart.text.positions import position_ids_from_mask

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


# ----- transformer, diffusion head, full inference ------------------------------------------------


KNOWN_GROUPS = ("ctx.", "tok.", "tf.", "diff.", "inf.")


@pytest.fixture(scope="module")
def model(case: GoldenCase):
    return load_model(case.root)


def _margin(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def test_case_holds_only_known_groups(case: GoldenCase):
    unknown = [k for k in case.tensors if not k.startswith(KNOWN_GROUPS)]
    assert not unknown, f"{case.name}: tensors of unknown groups, not checked by this suite: {unknown}"


def test_context(case: GoldenCase):
    case.check("ctx.position_ids", position_ids_from_mask(case.input("ctx.mask")))
    case.input("ctx.context")
    case.assert_covered("ctx.")


@torch.no_grad()
def test_teacher_forcing(case: GoldenCase, model):
    tf = model.transformer
    context, positions = case.tensors["ctx.context"], case.tensors["ctx.position_ids"]
    inputs = case.input("tok.var_input")
    case.check("tf.block_input", tf.embed_sequence(tf.embed_context(context), inputs, tf.patch_nums))
    out = tf(context, positions, inputs)
    case.check("tf.block_out", out.hidden)
    case.check("tf.logits", out.logits)
    last = tf.scale_slices(tf.patch_nums)[-1]
    idx = out.logits[:, last].argmax(dim=-1)
    case.check("tf.last_scale_idx_argmax", idx)
    case.check("tf.last_scale_margin", _margin(out.logits[:, last]))
    pre_norm = out.hidden[:, -idx.shape[1]:] + tf.word_embed(model.tokenizer.quantizer.codebook(idx))
    case.check("tf.diffusion_z_pre_norm", pre_norm)
    case.check("tf.diffusion_z", tf.diffusion_condition(out.hidden[:, -idx.shape[1]:],
                                                        model.tokenizer.quantizer.codebook(idx)))
    case.assert_covered("tf.")


@torch.no_grad()
def test_diffusion_head(case: GoldenCase, model):
    head = model.head
    Cv = head.latent_channels
    case.check("diff.net.out", head(case.input("diff.net.x"), case.input("diff.net.t"),
                                    case.input("diff.net.c")))
    # CFG on eps: the head sees the conditional x twice; variance values stay per half.
    x, t, c = case.input("diff.cfgnet.x"), case.input("diff.cfgnet.t"), case.input("diff.cfgnet.c")
    g = case.input("diff.cfgnet.cfg_scale").item()
    n = len(x) // 2
    eps, _ = guided_prediction(head, x[:n], t, c, g)
    raw = head(torch.cat([x[:n], x[:n]]), t, c)
    case.check("diff.cfgnet.out", torch.cat([torch.cat([eps, eps]), raw[:, Cv:]], dim=1))

    schedule = DiffusionSchedule.cosine(head.config.num_train_timesteps, head.config.sampling_steps)
    case.check("diff.schedule.betas", schedule.betas)
    case.check("diff.schedule.timestep_map", schedule.timestep_map)
    for name in ("sample_cfg", "sample_nocfg"):
        _check_diffusion_sampler(case, head, schedule, name)
    case.assert_covered("diff.")


def _check_diffusion_sampler(case: GoldenCase, head, schedule, name: str):
    cfg = case.input(f"diff.{name}.cfg").item()
    z = case.input(f"diff.{name}.z")
    guidance = None if cfg == 1.0 else cfg  # the official head samples unguided at exactly 1.0
    initial = case.input(f"diff.{name}.noise_init")
    draws = case.input(f"diff.{name}.noise_steps")
    n = len(initial)
    steps = list(reverse_steps(head, z, schedule, guidance=guidance,
                               noise=DiffusionNoise(initial, [d[:n] for d in draws])))
    trace = {"x_in": [s.x_in for s in steps], "pred_x0": [s.pred_x0 for s in steps],
             "x_out": [s.x_out for s in steps]}
    if guidance is not None:
        # The official sampler also carries the unconditional half of x along (it never feeds back
        # into the conditional half): replay it with the same steps to check those rows too.
        uncond = _replay_unconditional_half(head, schedule, z, guidance, initial, draws, steps)
        trace = {k: [torch.cat([a, b]) for a, b in zip(trace[k], uncond[k])] for k in trace}
    rows = trace["x_in"][0].shape[0]
    case.check(f"diff.{name}.timesteps", torch.tensor([[s.index] * rows for s in steps]))
    case.check(f"diff.{name}.x_in_steps", torch.stack(trace["x_in"]))
    case.check(f"diff.{name}.pred_xstart_steps", torch.stack(trace["pred_x0"]))
    case.check(f"diff.{name}.sample_steps", torch.stack(trace["x_out"]))
    case.check(f"diff.{name}.out", trace["x_out"][-1] * head.config.residual_scale)


def _replay_unconditional_half(head, schedule, z, guidance, initial, draws, steps):
    n, Cv = len(initial), initial.shape[1]
    x, out = initial, {"x_in": [], "pred_x0": [], "x_out": []}
    for k, step in enumerate(steps):
        t = schedule.timestep_map[step.index].expand(2 * n)
        eps, _ = guided_prediction(head, step.x_in, t, z, guidance)
        var_uncond = head(torch.cat([step.x_in, step.x_in]), t, z)[n:, Cv:]
        noise = draws[k][n:] if step.index > 0 else None
        pred_x0, x_next = posterior_step(schedule.coefficients(step.index, x.device), x, eps,
                                         var_uncond, noise, 1.0)
        out["x_in"].append(x)
        out["pred_x0"].append(pred_x0)
        out["x_out"].append(x_next)
        x = x_next
    return out


@torch.no_grad()
@pytest.mark.parametrize("attention_path", attention.PATHS)
def test_inference(case: GoldenCase, model, attention_path, monkeypatch):
    # Both attention paths (PyTorch's SDPA and openhart's CPU kernel) must give the official numbers.
    monkeypatch.setenv("OPENHART_ATTENTION", attention_path)
    tf = model.transformer
    context = case.input("ctx.context")
    positions = case.input("ctx.position_ids")
    cfg = case.input("inf.cfg").item()
    case.input("inf.g_seed")  # seeds only the official Gumbel/multinomial generator: no effect here
    orders = case.input("inf.maskgit_orders")  # one MaskGIT round: the order has no effect
    assert torch.equal(orders.sort(dim=1).values, torch.arange(orders.shape[1]).expand_as(orders))

    uncond = torch.zeros_like(context)
    block_in = tf.embed_context(torch.cat([context, uncond])) + tf.level_embedding(0)
    case.check("inf.block_in.0", block_in)

    K = len(tf.patch_nums)
    records = []
    noise = DiffusionNoise(case.input("inf.diff.noise_init"),
                           list(case.input("inf.diff.noise_steps_cond_half")))
    # Argmax selection (top_k=1) makes the official Gumbel smoothing exactly one-hot.
    out = generate(model, context, positions, SamplingConfig(guidance_scale=cfg, top_k=1, smooth=True),
                   torch.Generator().manual_seed(0), diffusion_noise=noise, on_scale=records.append)
    scales = [r for r in records if r.stage == "codes"]
    assert [r.si for r in scales] == list(range(K))
    for r in scales:
        case.check(f"inf.block_out.{r.si}", r.hidden)
        case.check(f"inf.logits.{r.si}", r.logits)
        case.check(f"inf.idx.{r.si}", r.indices)
        case.check(f"inf.margin.{r.si}", _margin(r.logits))
        if r.si < K - 1:
            case.check(f"inf.h_BChw.{r.si}", r.h)
            case.check(f"inf.fhat.{r.si}", r.f_hat)
            case.check(f"inf.next_map.{r.si}", r.next_map)
    last = records[-1]
    assert last.stage == "residual"
    case.check("inf.diff.cfg", torch.tensor([cfg * (K - 2) / (K - 1)]))
    case.check("inf.diff.z", last.diffusion_cond.flatten(0, 1))
    case.check("inf.diff.out_cond_half", last.residual.flatten(0, 1))
    case.check("inf.fhat_final", out.latent)
    case.check("inf.image", out.images)
    case.assert_covered("inf.")


# ----- quality guard of the bf16 path -------------------------------------------------------------

# bf16 tolerance of the teacher-forced logits against fp32 (documented in docs/performance.md):
BF16_MAX_ABS_OVER_STD = 0.15   # max |logits_bf16 - logits_fp32| / std(logits_fp32)
BF16_MEAN_KL = 1e-3            # mean over tokens of KL(p_fp32 || p_bf16), nats
BF16_ARGMAX_AGREEMENT = 0.95   # fraction of tokens whose most likely code is unchanged


@torch.no_grad()
def test_bf16_teacher_forcing_stays_close_to_fp32(case: GoldenCase, model):
    context, positions = case.tensors["ctx.context"], case.tensors["ctx.position_ids"]
    inputs = case.tensors["tok.var_input"]
    fp32 = model.transformer(context, positions, inputs).logits
    bf16_model = load_model(case.root, dtype=torch.bfloat16)
    bf16 = bf16_model.transformer(context.bfloat16(), positions, inputs.bfloat16()).logits
    assert bf16.dtype == torch.float32, "logits are returned in fp32 whatever the weights"
    assert (bf16 - fp32).abs().max() <= BF16_MAX_ABS_OVER_STD * fp32.std()
    kl = torch.nn.functional.kl_div(bf16.log_softmax(-1), fp32.log_softmax(-1), log_target=True,
                                    reduction="none").sum(-1).mean()
    assert kl <= BF16_MEAN_KL
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() >= BF16_ARGMAX_AGREEMENT

"""Static checks of the CUDA-only code on CPU: the FlashAttention 3 varlen call against its documented
signature and preconditions (a fake kernel checks them, then computes SDPA), the model end to end through that
branch under bf16 autocast, cu_seqlens' one length per micro-batch shape on real batches, and bf16 against float32
on a trained checkpoint."""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg
from tests.helpers import randomize, tiny_hp, train_tiny
from tests.test_components import _packed_qkv, _reference_attention

CPU = torch.device("cpu")


def _signature(params: str) -> inspect.Signature:
    return inspect.signature(eval(f"lambda {params}: None"))


# FA3's flash_attn_varlen_func as documented in hopper/flash_attn_interface.py (Dao-AILab/flash-attention,
# read 2026-11-26)
FA3_SIGNATURE = _signature(
    "q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None, seqused_k=None, "
    "softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None, v_descale=None, "
    "window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False, "
    "sm_margin=0, return_attn_probs=False"
)
FA_CALLS = []  # (q shape, number of cu_seqlens entries) of every eager call


def fake_flash_varlen(*args, **kwargs):
    """Stands in for flash_attn_varlen_func: the call must bind to the documented signature and meet the
    kernel's preconditions (packed [total, heads, dim] bf16/fp16 with a contiguous last dim, GQA heads, int32
    contiguous cu_seqlens from 0 to total, an int max_seqlen, causal); then the same maths by SDPA with the
    block-diagonal causal mask that cu_seqlens describes."""
    a = FA3_SIGNATURE.bind(*args, **kwargs).arguments
    q, k, v, cu = a["q"], a["k"], a["v"], a["cu_seqlens_q"]
    assert q.dim() == k.dim() == v.dim() == 3 and k.shape == v.shape and q.shape[0] == k.shape[0]
    assert q.dtype in (torch.bfloat16, torch.float16) and q.dtype == k.dtype == v.dtype, (q.dtype, k.dtype)
    assert all(t.stride(-1) == 1 for t in (q, k, v)) and q.size(1) % k.size(1) == 0
    assert a["cu_seqlens_k"] is cu and cu.dtype == torch.int32 and cu.dim() == 1 and cu.is_contiguous()
    assert isinstance(a["max_seqlen_q"], int) and a["max_seqlen_k"] == a["max_seqlen_q"]
    assert a.get("causal") is True and a.get("softmax_scale") is None and a.get("dropout_p", 0.0) == 0.0
    n = q.size(0)
    if not torch.compiler.is_compiling():  # values: only outside a traced graph
        lengths = cu.diff()
        assert cu[0] == 0 and cu[-1] == n and (lengths >= 0).all() and lengths.max() <= a["max_seqlen_q"]
        FA_CALLS.append((tuple(q.shape), cu.numel()))
    segment = torch.searchsorted(cu[1:], torch.arange(n, dtype=cu.dtype, device=q.device), right=True)
    mask = (segment[:, None] == segment[None, :]) & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                         enable_gqa=True)  # fmt: skip
    return out.transpose(0, 1)


def test_the_fake_kernel_refuses_what_the_real_one_refuses():
    tokens, q, k, v = _packed_qkv()
    layout = tg.make_layout(tokens, "fa3")
    q, k, v = (t.flatten(0, 1).bfloat16() for t in (q, k, v))
    cu, T = layout.cu_seqlens, tokens.size(1)
    good = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=T, max_seqlen_k=T, causal=True)
    fake_flash_varlen(q, k, v, **good)
    bad = [
        ((q.float(), k.float(), v.float()), good),  # the kernels take bf16/fp16 only
        ((q, k, v), {**good, "cu_seqlens_q": cu.long(), "cu_seqlens_k": cu.long()}),  # int32 only
        ((q.transpose(0, 2).contiguous().transpose(0, 2), k, v), good),  # last dim not contiguous
        ((q, k, v), {**good, "max_seqlen_q": torch.tensor(T), "max_seqlen_k": torch.tensor(T)}),  # an int
        ((q, k, v), {**good, "causal": False}),
        ((q, k, v), {**good, "is_causal": True}),  # not a parameter of the kernel
        ((q, k, v, cu, cu, T, T, 0.0, None, True), {}),  # FA2's positions; FA3 has seqused_q there
    ]
    for args, kwargs in bad:
        with pytest.raises((AssertionError, TypeError)):
            fake_flash_varlen(*args, **kwargs)


def test_fa_branch_matches_the_document_masked_reference(monkeypatch):
    monkeypatch.setattr(tg, "_flash_varlen", fake_flash_varlen)
    tokens, q, k, v = _packed_qkv(seed=21)
    layout = tg.make_layout(tokens, "fa3")
    B, T = tokens.shape
    assert layout.cu_seqlens.dtype == torch.int32 and (layout.cu_seqlens.numel() - 1) % tg.varlen_room(B, T) == 0
    out = tg.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert (out.float() - _reference_attention(tokens, q, k, v)).abs().max() < 3e-2  # bf16 inputs and output


def test_model_runs_end_to_end_through_the_fa_branch_under_bf16_autocast(monkeypatch):
    """Forward and backward of the flagship architecture (looping, parallel lanes, XSA, gates) with the varlen
    branch under bf16 autocast, as on CUDA: one kernel call per virtual layer, loss and gradients as with SDPA."""
    monkeypatch.setattr(tg, "_flash_varlen", fake_flash_varlen)
    hp = tiny_hp()
    model = randomize(tg.GPT(hp))
    model.looping = True
    tokens, *_ = _packed_qkv(seed=22, T=64)
    y = torch.roll(tokens, -1, 1)
    results = {}
    for backend in ("fa3", "sdpa"):
        FA_CALLS.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(tokens, y, tg.make_layout(tokens, backend)).mean()
        loss.backward()
        results[backend] = (loss.item(), [p.grad.clone() for p in model.parameters()], list(FA_CALLS))
        model.zero_grad(set_to_none=True)
    (fa_loss, fa_grads, calls), (sdpa_loss, sdpa_grads, _) = results["fa3"], results["sdpa"]
    B, T = tokens.shape
    cu_entries = tg.make_layout(tokens, "fa3").cu_seqlens.numel()
    assert calls == [((B * T, hp.num_heads, hp.model_dim // hp.num_heads), cu_entries)] * len(model.virtual_layers())
    assert math.isfinite(fa_loss) and fa_loss == pytest.approx(sdpa_loss, abs=2e-3)
    for a, b in zip(fa_grads, sdpa_grads):
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-6


def test_cu_seqlens_has_one_length_per_micro_batch_shape_on_real_batches(caseops_dataset):
    """The flagship's micro-batches (48 x 2048, and the 96 x 1024 and 192 x 512 of a length schedule) over the
    CaseOps sample: cu_seqlens keeps one length, so the compiled model (dynamic=False) never recompiles for it,
    where padding to a multiple of 64 gave several."""
    tokens = tg.load_shard(str(caseops_dataset / "fineweb_train_000000.bin"))
    for B, T in [(48, 2048), (96, 1024), (192, 512)]:
        lengths, padded_to_64 = set(), set()
        for a in range(0, min(len(tokens) - B * T + 1, 40 * B * T), B * T):  # 40 micro-batches
            x = torch.from_numpy(tokens[a : a + B * T].astype(np.int64)).view(B, T)
            cu = tg.make_layout(x, "fa3").cu_seqlens
            starts = torch.nonzero((x == tg.BOS_ID).index_fill(1, torch.tensor([0]), True).flatten()).flatten()
            assert cu.dtype == torch.int32 and cu.is_contiguous()
            assert torch.equal(cu[: starts.numel()].long(), starts) and (cu[starts.numel() :] == B * T).all()
            lengths.add(cu.numel())
            padded_to_64.add(starts.numel() + 1 + -(starts.numel() + 1) % 64)
        assert lengths == {tg.varlen_room(B, T) + 1}, (B, T, lengths)
        assert len(padded_to_64) > 1  # the data does vary: the old padding recompiled on it


def test_cu_seqlens_grows_by_whole_rooms_when_documents_are_short():
    B, T = 2, 512
    x = torch.full((B, T), tg.BOS_ID)  # every token a document: far more segments than the room
    cu = tg.make_layout(x, "fa3").cu_seqlens
    room = tg.varlen_room(B, T)
    assert (cu.numel() - 1) % room == 0 and cu.numel() - 1 >= B * T
    assert torch.equal(cu[: B * T + 1], torch.arange(B * T + 1, dtype=torch.int32))


def test_bf16_autocast_loss_is_within_a_stated_tolerance_of_float32(small_dataset):
    """The CUDA numerics on CPU: a model trained 25 steps on the sample, its validation NLL under bf16 autocast
    within 0.5% of float32 (measured: 0.0015%)."""
    hp, model, loader = train_tiny(small_dataset, 25)
    loader.close()
    val = tg.load_validation(hp, tg.load_tokenizer(str(small_dataset / "tokenizer.model"), hp.vocab_size))
    rows = tg.pack_rows(tg.eval_segments(val.tokens, hp.eval_seq_len, 0), hp.eval_seq_len)[:64]
    x, y, starts, score, _, _ = (torch.from_numpy(a) for a in tg.row_arrays(rows, val, hp.eval_seq_len))
    layout = tg.make_layout(x, "sdpa", starts)
    with torch.no_grad():
        fp32 = (model(x, y, layout) * score).sum() / score.sum()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = (model(x, y, layout) * score).sum() / score.sum()
    assert fp32 < math.log(hp.vocab_size) - 0.5  # trained: well below uniform
    assert abs(bf16 - fp32) / fp32 < 5e-3, (bf16.item(), fp32.item())

"""Unit tests of each model/optimizer component's defining property, on CPU with tiny configurations."""

import itertools
import math
import random
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train_gpt as tg  # the repo root is on sys.path: tests/ is a package (rootdir-based insertion)
from tests.helpers import randomize, tiny_hp


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread is faster, and immune to a busy machine's other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_hp(**overrides) -> tg.Hyperparameters:
    return tiny_hp(**{"VOCAB_SIZE": 64, "TRAIN_SEQ_LEN": 32, "EVAL_SEQ_LEN": 32, **overrides})


def packed_tokens(gen: torch.Generator, B: int, T: int, vocab: int, bos_positions) -> torch.Tensor:
    """Random non-BOS tokens with BOS (id 1) at the given positions of every row."""
    x = torch.randint(2, vocab, (B, T), generator=gen)
    x[:, list(bos_positions)] = tg.BOS_ID
    return x


# -----------------------------------------------------------------------------
# 1. XSA
# -----------------------------------------------------------------------------


def _own_value_dots(out: torch.Tensor, v: torch.Tensor, group_of, ref: torch.Tensor) -> torch.Tensor:
    """[B,T,H]: each head's output projected on the unit value vector of KV group group_of(h), relative to
    the norm of ref (the head's output before XSA), so that near-zero outputs do not blow the ratio up."""
    H = out.size(2)
    vg = F.normalize(v[:, :, [group_of(h) for h in range(H)]], dim=-1)
    return (out * vg).sum(-1) / ref.norm(dim=-1)


def test_xsa_output_is_orthogonal_to_each_heads_own_value_with_gqa():
    gen = torch.Generator().manual_seed(1)
    B, T, H, Hkv, D = 2, 7, 8, 2, 16
    rep = H // Hkv
    v = torch.randn(B, T, Hkv, D, generator=gen)
    # y has a large component along its own group's value, so it is far from orthogonal before XSA
    y = torch.randn(B, T, H, D, generator=gen) + 3 * v.repeat_interleave(rep, dim=2)
    out = tg.exclusive_self_attention(y, v)
    assert out.shape == y.shape

    own = lambda h: h // rep  # repeat_interleave: heads 0..3 share KV group 0, heads 4..7 group 1
    before = _own_value_dots(y, v, own, y)
    after = _own_value_dots(out, v, own, y)
    assert before.abs().min() > 0.3, "the test input must not already be orthogonal"
    assert after.abs().max() < 1e-5

    # against the wrong GQA mapping (tiling, h % Hkv) the output is not orthogonal: the grouping is pinned down
    assert _own_value_dots(out, v, lambda h: h % Hkv, y).abs().max() > 1e-2

    # only the own-value component is removed: out = y - (y . v_hat) v_hat
    removed = y - out
    vn = F.normalize(v, dim=-1).repeat_interleave(rep, dim=2)
    assert torch.allclose(removed, (y * vn).sum(-1, keepdim=True) * vn, atol=1e-5)
    assert torch.allclose((out * out).sum(-1), (y * y).sum(-1) - (y * vn).sum(-1) ** 2, rtol=1e-4, atol=1e-4)


def test_xsa_inside_attention_module():
    hp = small_hp(XSA_LAST_N=1, SPARSE_ATTN_GATE=0)
    torch.manual_seed(2)
    plain, xsa = tg.Attention(hp, layer=4), tg.Attention(hp, layer=5)  # XSA on the last layer only
    assert not plain.xsa and xsa.xsa and xsa.gate_w is None
    xsa.load_state_dict(plain.state_dict())  # the same random weights; only the XSA switch differs
    with torch.no_grad():
        for m in (plain, xsa):
            m.proj.weight.copy_(torch.eye(hp.model_dim))  # output = the heads' outputs, concatenated
    gen = torch.Generator().manual_seed(3)
    B, T = 2, 16
    x = torch.randn(B, T, hp.model_dim, generator=gen)
    tokens = packed_tokens(gen, B, T, hp.vocab_size, [0, 9])
    layout = tg.make_layout(tokens, "sdpa")
    gpt = tg.GPT(hp)
    cos, sin = gpt.rope_cos[:T], gpt.rope_sin[:T]
    shape = (B, T, xsa.h, xsa.hd)
    with torch.no_grad():
        y = plain(x, (cos, sin), layout).view(shape)
        out = xsa(x, (cos, sin), layout).view(shape)
        v = xsa.c_v(x).view(B, T, xsa.kv, xsa.hd)
    own = lambda h: h // (xsa.h // xsa.kv)
    assert _own_value_dots(y, v, own, y).abs().mean() > 0.1  # without XSA: far from orthogonal
    assert _own_value_dots(out, v, own, y).abs().max() < 1e-5
    assert torch.allclose(out, tg.exclusive_self_attention(y, v), atol=1e-6)
    # a document's first position attends only to itself (y = v there), so XSA leaves nothing
    assert out[:, [0, 9]].abs().max() < 1e-5 and y[:, [0, 9]].abs().max() > 0.1


# -----------------------------------------------------------------------------
# 2. SmearGate
# -----------------------------------------------------------------------------


def test_smear_gate_is_identity_at_init():
    hp = small_hp()
    gate = tg.SmearGate(hp)
    e = torch.randn(2, 10, hp.model_dim)
    starts = torch.zeros(2, 10, dtype=torch.bool)
    starts[:, 0] = True
    assert torch.equal(gate(e, starts), e)


def test_smear_gate_never_crosses_a_document_start():
    hp = small_hp()
    gate = tg.SmearGate(hp)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        gate.lam.fill_(0.7)
        gate.w.copy_(torch.randn(gate.w.shape, generator=gen))
    B, T = 2, 12
    e = torch.randn(B, T, hp.model_dim, generator=gen)
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[:, [0, 5]] = True
    starts[1, 9] = True
    out = gate(e, starts)

    assert torch.equal(out[starts], e[starts])  # exactly: nothing from the previous token at a start
    assert (out[~starts] - e[~starts]).abs().amax(-1).min() > 1e-3  # every other position mixes in e_{t-1}
    # the documented formula at non-start positions
    g = 0.7 * torch.sigmoid(e[..., : hp.gate_window] @ gate.w.detach())
    expected = e.clone()
    expected[:, 1:] += g[:, 1:, None] * e[:, :-1]
    expected[starts] = e[starts]
    assert torch.allclose(out, expected, atol=1e-6)


def _doc_losses(model, seq):
    x, y = seq[:, :-1], seq[:, 1:]
    with torch.no_grad():
        return model(x, y, tg.make_layout(x, "sdpa"))


@pytest.mark.parametrize("looping", [False, True])
def test_smear_gate_in_full_model_keeps_documents_apart(looping):
    hp = small_hp(SMEAR_GATE=1)
    torch.manual_seed(5)
    model = randomize(tg.GPT(hp).eval(), std=0.1, seed=5)
    model.looping = looping
    with torch.no_grad():
        model.smear.lam.fill_(1.0)
    gen = torch.Generator().manual_seed(6)
    T, bos = 32, 14  # doc N: inputs 0..13, doc N+1: inputs 14.. (BOS at 14)
    seq = packed_tokens(gen, 1, T + 1, hp.vocab_size, [0, bos])
    changed = seq.clone()
    changed[0, bos - 1] = 2 + (seq[0, bos - 1] - 2 + 7) % (hp.vocab_size - 2)  # last token of doc N
    assert changed[0, bos - 1] != seq[0, bos - 1] and changed[0, bos - 1] != tg.BOS_ID

    a, b = _doc_losses(model, seq), _doc_losses(model, changed)
    assert a.shape == (1, T)
    assert not torch.allclose(a[:, bos - 2 : bos], b[:, bos - 2 : bos])  # doc N itself does see the change
    assert torch.equal(a[:, bos:], b[:, bos:])  # doc N+1 does not

    # the check has teeth: a SmearGate that ignored document starts would leak into doc N+1
    smear = model.smear
    smear.forward = lambda e, starts: tg.SmearGate.forward(smear, e, torch.zeros_like(starts))
    a2, b2 = _doc_losses(model, seq), _doc_losses(model, changed)
    assert (a2[:, bos:] - b2[:, bos:]).abs().max() > 1e-4


# -----------------------------------------------------------------------------
# 3. Virtual layer order
# -----------------------------------------------------------------------------


def test_virtual_layer_order():
    order = tg.virtual_layer_order(11, 3, 5, 2)
    assert order == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert len(order) == 17
    assert tg.virtual_layer_order(11, 3, 5, 0) == list(range(11))
    assert tg.virtual_layer_order(4, 0, 3, 1) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert tg.virtual_layer_order(6, 2, 2, 3) == [0, 1, 2, 2, 2, 2, 3, 4, 5]


def test_gpt_virtual_layers_switch_with_looping():
    hp = small_hp()
    torch.manual_seed(7)
    model = randomize(tg.GPT(hp).eval(), seed=7)
    assert model.looping is False
    assert model.virtual_layers() == [0, 1, 2, 3, 4, 5]
    # U-Net skips are sized for the looped depth, the deepest the model ever runs
    assert model.skip_weights.shape == (len(tg.virtual_layer_order(6, 2, 3, 2)) // 2, hp.model_dim)

    gen = torch.Generator().manual_seed(8)
    seq = packed_tokens(gen, 2, 33, hp.vocab_size, [0, 20])
    off = _doc_losses(model, seq)
    model.looping = True
    assert model.virtual_layers() == [0, 1, 2, 3, 2, 3, 2, 3, 4, 5]
    on = _doc_losses(model, seq)
    assert torch.isfinite(on).all() and not torch.allclose(off, on)  # the extra passes really run
    model.looping = False
    assert torch.equal(_doc_losses(model, seq), off)

    flagship = tg.Hyperparameters({})
    assert len(tg.virtual_layer_order(flagship.num_layers, flagship.loop_start, flagship.loop_end, 2)) == 17


# -----------------------------------------------------------------------------
# 4. Partial RoPE
# -----------------------------------------------------------------------------


def _rope_inputs(T=12):
    gpt = tg.GPT(small_hp(ROPE_DIMS=16, ROPE_BASE=10000.0))
    cos, sin = gpt.rope_cos[:T], gpt.rope_sin[:T]
    assert cos.shape == (T, 8)
    return cos, sin  # rope_dims // 2 frequencies, as GPT holds them


def test_partial_rope_rotates_only_the_leading_dims():
    T = 12
    cos, sin = _rope_inputs(T)
    x = torch.randn(2, T, 3, 64, generator=torch.Generator().manual_seed(9))
    out = tg.apply_partial_rope(x, cos, sin)
    assert out.shape == x.shape
    assert torch.equal(out[..., 16:], x[..., 16:])  # bit-identical pass-through
    assert torch.allclose(out[:, 0], x[:, 0])  # angle 0 at position 0
    assert (out[:, 1:, :, :16] - x[:, 1:, :, :16]).abs().amax(-1).min() > 1e-3  # every later position moves
    assert torch.allclose(out[..., :16].norm(dim=-1), x[..., :16].norm(dim=-1), rtol=1e-5)
    # each (i, i + 8) pair is a plane rotation: its norm is preserved as well
    pair = lambda t: t[..., :8] ** 2 + t[..., 8:16] ** 2
    assert torch.allclose(pair(out), pair(x), rtol=1e-4, atol=1e-6)

    # against an independent complex-number reference: (x_i + i x_{i+8}) * exp(i t base^(-2i/16))
    t = torch.arange(T, dtype=torch.float64)[:, None]
    theta = t * 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    z = (
        torch.complex(x[..., :8].double(), x[..., 8:16].double())
        * torch.polar(torch.ones_like(theta), theta)[None, :, None]
    )
    assert torch.allclose(out[..., :8].double(), z.real, atol=1e-5)
    assert torch.allclose(out[..., 8:16].double(), z.imag, atol=1e-5)


def test_partial_rope_dot_products_depend_only_on_relative_position():
    T = 12
    cos, sin = _rope_inputs(T)
    gen = torch.Generator().manual_seed(10)
    q0, k0 = torch.randn(64, generator=gen), torch.randn(64, generator=gen)
    q = tg.apply_partial_rope(q0.expand(1, T, 1, 64).contiguous(), cos, sin)[0, :, 0]
    k = tg.apply_partial_rope(k0.expand(1, T, 1, 64).contiguous(), cos, sin)[0, :, 0]
    dots = q @ k.T  # dots[m, n] = <R_m q0, R_n k0>
    for shift in range(1, 5):
        assert torch.allclose(dots[shift:, shift:], dots[:-shift, :-shift], atol=1e-4)
    by_offset = torch.stack([dots[m, m - 3] for m in range(3, T)])
    assert torch.allclose(by_offset, by_offset[0].expand_as(by_offset), atol=1e-4)
    assert (dots[0] - dots[0, 0]).abs().max() > 1e-2  # but it does depend on the offset
    x0 = q0.view(1, 1, 1, 64)
    assert torch.equal(tg.apply_partial_rope(x0, cos[:, :0], sin[:, :0]), x0)  # ROPE_DIMS=0: no rotation


# -----------------------------------------------------------------------------
# 5. Muon
# -----------------------------------------------------------------------------


def _square_with_condition(n, cond, gen):
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    s = 7.0 * torch.logspace(0, -math.log10(cond), n)
    return U @ torch.diag(s) @ V.T


@pytest.mark.parametrize("kind", ["tall", "wide", "square", "batched"])
def test_orthogonalize_polar_express_gives_unit_singular_values(kind):
    gen = torch.Generator().manual_seed(11)
    G = {
        "tall": lambda: torch.randn(96, 32, generator=gen),
        "wide": lambda: torch.randn(32, 96, generator=gen),
        "square": lambda: _square_with_condition(48, 100.0, gen),
        "batched": lambda: torch.randn(3, 40, 24, generator=gen) * torch.tensor([0.01, 1.0, 50.0])[:, None, None],
    }[kind]()
    raw = torch.linalg.svdvals(G)
    assert (raw - 1).abs().max() > 1.0, "the input's singular values must be far from 1"
    X = tg.orthogonalize(G, 5)
    assert X.shape == G.shape and X.dtype == G.dtype
    s = torch.linalg.svdvals(X)
    # measured: Polar Express (5 steps, 2% norm margin) lands in about [0.86, 1.14], mean 1.00-1.02
    assert s.min() > 0.8 and s.max() < 1.2, (s.min().item(), s.max().item())
    assert (s.mean(-1) - 1).abs().max() < 0.05
    # and it approximates the polar factor U V^T of G itself
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    assert F.cosine_similarity(X.flatten(-2), (U @ Vh).flatten(-2), dim=-1).min() > 0.98


def _muon_expected(p0, grads, lr, mom, wd, row_norm):
    """p after len(grads) Muon steps, computed step by step as the docstring describes."""
    p, buf = p0.clone(), torch.zeros_like(p0)
    rows, cols = p0.shape
    for g in grads:
        buf = mom * buf + g
        u = g + mom * buf  # Nesterov
        if row_norm:
            u = u / u.norm(dim=-1, keepdim=True)
        u = tg.orthogonalize(u, 5) * math.sqrt(max(1.0, rows / cols))
        p = p * (1 - lr * wd) - lr * u
    return p


@pytest.mark.parametrize("row_norm", [1, 0])
def test_muon_steps_match_the_hand_computed_update(row_norm):
    gen = torch.Generator().manual_seed(12)
    lr, mom, wd = 0.05, 0.9, 0.2
    tall0, wide0 = torch.randn(32, 16, generator=gen), torch.randn(16, 32, generator=gen)
    tall2 = torch.randn(32, 16, generator=gen)  # a second matrix of the same shape: batched together
    params = [nn.Parameter(t.clone()) for t in (tall0, wide0, tall2)]
    # rows of very different scale, so that MuonEq-R's row normalisation changes the result
    grads = [[torch.randn(t.shape, generator=gen) * torch.logspace(-2, 1, t.size(0))[:, None] for t in params]]
    grads.append([torch.randn(t.shape, generator=gen) for t in params])
    opt = tg.Muon(params, lr, mom, wd, 5, tg.POLAR_EXPRESS, row_norm)

    for step, gs in enumerate(grads, 1):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        for i, (p, p0) in enumerate(zip(params, (tall0, wide0, tall2))):
            expected = _muon_expected(p0, [gs_[i] for gs_ in grads[:step]], lr, mom, wd, row_norm)
            assert torch.allclose(p.detach(), expected, atol=1e-5), (step, i)

    # first step by hand, for the tall matrix: buf = g, Nesterov = g + mom * g, scale sqrt(32/16)
    g = grads[0][0]
    u = (1 + mom) * g
    if row_norm:
        u = u / u.norm(dim=-1, keepdim=True)
    first = tall0 * (1 - lr * wd) - lr * math.sqrt(2.0) * tg.orthogonalize(u, 5)
    assert torch.allclose(_muon_expected(tall0, [g], lr, mom, wd, row_norm), first, atol=1e-6)
    # the update's singular values are near sqrt(rows/cols) for tall, 1 for wide
    upd = (tall0 * (1 - lr * wd) - first) / lr
    assert torch.linalg.svdvals(upd).mean().item() == pytest.approx(math.sqrt(2.0), rel=0.05)
    # row normalisation matters on this gradient
    other = _muon_expected(tall0, [g], lr, mom, wd, 1 - row_norm)
    assert (other - first).abs().max() > 1e-3


def test_muon_weight_decay_is_decoupled():
    p = nn.Parameter(torch.randn(8, 8))
    p0 = p.detach().clone()
    p.grad = torch.zeros(8, 8)  # zero update: only the decay acts
    tg.Muon([p], 0.1, 0.95, 0.5, 5, tg.POLAR_EXPRESS, 1).step()
    assert torch.allclose(p.detach(), p0 * (1 - 0.1 * 0.5), atol=1e-6)


# -----------------------------------------------------------------------------
# 6. Schedules
# -----------------------------------------------------------------------------


def test_lr_multiplier():
    for frac in (0.0, 0.1, 0.149):
        assert tg.lr_multiplier(frac, 0.85, 0.1) == 1.0
    assert tg.lr_multiplier(0.5, 0.85, 0.1) == pytest.approx((1 - 0.5) / 0.85)
    assert tg.lr_multiplier(0.15 + 1e-9, 0.85, 0.1) == pytest.approx(1.0)  # continuous at the warmdown start
    assert tg.lr_multiplier(0.95, 0.85, 0.1) == pytest.approx(0.1)
    assert tg.lr_multiplier(1.0, 0.85, 0.1) == pytest.approx(0.1)
    assert tg.lr_multiplier(0.99, 0.0, 0.1) == 1.0  # no warmdown


def test_muon_takes_the_block_matrices_and_adamw_every_per_channel_control():
    """Muon orthogonalises only the blocks' weight matrices; resid_mix (2 x d), the gates and the lane mixers are
    2-D too but per-channel controls, which go to AdamW with the other small tensors, as in the naive baseline."""
    model = tg.GPT(tiny_hp())
    muon, adam = tg.build_optimizers(model, tiny_hp(), 0, 1, torch.device("cpu"))
    name = {id(p): n for n, p in model.named_parameters()}
    on_muon = {name[id(p)] for p in muon.param_groups[0]["params"]}
    assert on_muon == {n for n, p in model.named_parameters() if n.endswith((".c_q.weight", ".c_k.weight",
                       ".c_v.weight", ".proj.weight", ".fc.weight"))}  # fmt: skip
    on_adam = {name[id(p)] for g in adam.param_groups for p in g["params"]}
    assert "blocks.0.resid_mix" in on_adam and on_muon | on_adam == set(name.values())


def test_muon_momentum_warmup():
    hp = tg.Hyperparameters({"MUON_MOMENTUM_WARMUP_FRAC": "0.4"})
    assert tg.muon_momentum_at(0, hp) == pytest.approx(0.92)
    assert tg.muon_momentum_at(0.2, hp) == pytest.approx(0.945)
    assert tg.muon_momentum_at(0.4, hp) == pytest.approx(0.97)
    assert tg.muon_momentum_at(0.9, hp) == pytest.approx(0.97)
    assert tg.muon_momentum_at(0.01, tg.Hyperparameters({"MUON_MOMENTUM_WARMUP_FRAC": "0"})) == pytest.approx(0.97)


def schedule_seen_by_train(steps: int, monkeypatch, step_ms=None, clock=None, **env) -> tuple[tg.Hyperparameters, dict]:
    """Muon momentum, LR and EMA decay per step of train()'s own loop, every step 1 s under a cap of `steps` s
    (or the cap given and the step times of `clock`), with compile_warmup's step times step_ms."""
    hp = tg.Hyperparameters({"MAX_WALLCLOCK_SECONDS": str(steps + 8), "ITERATIONS": str(10 * steps),
                             "NUM_LOOPS": "0", "GPTQ": "0", **env})  # fmt: skip
    seen = {"momentum": [], "decay": [], "lr": []}

    def step(model, step_model, optimizers, *a):
        seen["momentum"].append(optimizers[0].param_groups[0]["momentum"])
        seen["lr"].append(optimizers[0].param_groups[0]["lr"])
        return 1.0, 0.0

    class EMA:
        def __init__(self, model):
            pass

        def update(self, model, decay):
            seen["decay"].append(decay)

        def copy_to(self, model):
            pass

    clock = clock or itertools.count()  # train() reads the clock as it starts, then once a step (agreed_ms)
    monkeypatch.setattr(tg.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(tg, "TrainLoader", lambda *a: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(tg, "train_step", step)
    monkeypatch.setattr(tg, "EMA", EMA)
    model, opt = nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1)], lr=1.0, momentum=0.5)
    model.looping, opt.param_groups[0]["base_lr"] = False, 1.0
    tg.train(hp, model, model, [opt], "sdpa", 0, 1, 1, torch.device("cpu"), lambda _: None, 0.0, step_ms)
    return hp, seen


def test_no_lr_ramp_after_a_length_change_when_seq_len_warmup_steps_is_0(monkeypatch):
    """SEQ_LEN_WARMUP_STEPS=0 is allowed: no ramp (it divided by zero at the first change of length)."""
    hp, seen = schedule_seen_by_train(20, monkeypatch, SEQ_LEN_SCHEDULE="1024@0.5,2048@1.0", SEQ_LEN_WARMUP_STEPS="0")
    assert seen["lr"] == pytest.approx([tg.lr_multiplier(s / 20, hp.warmdown_frac, hp.min_lr) for s in range(20)])


def test_schedules_are_the_flagships_at_its_length_and_keep_their_shape_at_any_other(monkeypatch):
    """Momentum warmup, EMA and LR as shares of the run: at the flagship's 4,900 steps the momentum warmup ends
    at step 1,500 and the EMA decays 0.9965 a step, as the former step-count settings did; at 300 steps, the
    same shape scaled (warmup over 92 steps, EMA 0.943 a step)."""
    for steps in (tg.FLAGSHIP_STEPS, 300):
        hp, seen = schedule_seen_by_train(steps, monkeypatch)
        assert len(seen["momentum"]) == steps
        warm = next(i for i, m in enumerate(seen["momentum"]) if m == pytest.approx(hp.muon_momentum))
        assert warm == math.ceil(hp.muon_momentum_warmup_frac * steps) == (1500 if steps == 4900 else 92)
        assert seen["momentum"][warm - 1] < hp.muon_momentum
        assert seen["decay"] == pytest.approx([1 - 0.0035 * tg.FLAGSHIP_STEPS / steps] * steps, abs=1e-5)
        assert seen["lr"][steps // 2] == pytest.approx((1 - 0.5) / 0.85)  # the warmdown, halfway
    assert seen["decay"][0] == pytest.approx(0.9428, abs=1e-4)


def test_flagship_plan_gives_the_records_ema_and_momentum_warmup_whatever_the_step_times(monkeypatch):
    """With compile_warmup's step times projecting the flagship's 4,900 steps, the EMA decays 0.9965 at every
    step and the momentum warmup ends at step 1,500, however long each step then takes (here: 20 to 300 ms at
    random, slower as the length grows); the projection weighs each shape's share of the cap by its time."""
    step_ms = [60.0, 100.0, 150.0]  # 1024, 2048, 3072 tokens (NUM_LOOPS=0: the three lengths)
    cap_s = tg.FLAGSHIP_STEPS / (0.1 / 60 + 0.6 / 100 + 0.3 / 150) / 1000 + 8  # + GPTQ_RESERVE_SECONDS
    rng = random.Random(0)

    def clock():
        t = 0.0
        while True:
            yield t
            t += rng.uniform(0.02, 0.3)

    hp, seen = schedule_seen_by_train(
        0, monkeypatch, step_ms, clock(), MAX_WALLCLOCK_SECONDS=str(cap_s), ITERATIONS="20000"
    )
    assert tg.planned_steps(hp, step_ms, 1000 * (cap_s - 8)) == tg.FLAGSHIP_STEPS
    assert len(seen["decay"]) > 1500 and seen["decay"] == pytest.approx([0.9965] * len(seen["decay"]), abs=1e-6)
    warm = next(i for i, m in enumerate(seen["momentum"]) if m == pytest.approx(hp.muon_momentum))
    assert warm == 1500 and seen["momentum"][warm - 1] < hp.muon_momentum
    assert tg.planned_steps(hp, None, 1000.0) is None and tg.planned_steps(hp, None, math.inf) == hp.iterations


def test_each_rank_clips_its_own_gradient_before_the_average(monkeypatch):
    """GRAD_CLIP_NORM bounds the gradient a rank sends into the average (R1611's place for the clip), and the
    norm train_step returns is the one of the gradient applied."""
    hp = tiny_hp(GRAD_CLIP_NORM="0.01")
    torch.manual_seed(0)
    model, sent = tg.GPT(hp), []
    x = torch.randint(2, 1024, (2, 16))
    loader = types.SimpleNamespace(next_batch=lambda seq_len, device: [(x, x)])
    sync = tg.sync_gradients

    def record_then_sync(params, world):
        sent.append(torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm().item())
        sync(params, world)

    monkeypatch.setattr(tg, "sync_gradients", record_then_sync)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    _, norm = tg.train_step(model, model, [opt], loader, 16, "sdpa", hp, 1, torch.device("cpu"))
    assert sent[0] == pytest.approx(0.01, rel=1e-4) and norm == pytest.approx(0.01, rel=1e-4)


def test_seq_len_schedule():
    sched = tg.parse_seq_len_schedule("1024@0.1,2048@0.7,3072@1.0", 2048)
    assert sched == [(1024, 0.1), (2048, 0.7), (3072, 1.0)]
    got = {f: tg.seq_len_at(sched, f) for f in (0.0, 0.1, 0.5, 0.7, 0.99, 1.0)}
    assert got == {0.0: 1024, 0.1: 2048, 0.5: 2048, 0.7: 3072, 0.99: 3072, 1.0: 3072}
    assert tg.parse_seq_len_schedule("", 2048) == [(2048, 1.0)]
    assert tg.seq_len_at(tg.parse_seq_len_schedule(" ", 512), 0.3) == 512


@pytest.mark.parametrize(
    "spec", ["1024", "1024@", "abc@1.0", "1024@0.5", "2048@0.7,1024@0.1,3072@1.0", "1@1.0", "1024@0.1;2048@1.0"]
)
def test_malformed_seq_len_schedule_raises(spec):
    with pytest.raises(tg.HyperparameterError, match="SEQ_LEN_SCHEDULE"):
        tg.parse_seq_len_schedule(spec, 2048)
    with pytest.raises(tg.HyperparameterError, match="SEQ_LEN_SCHEDULE"):
        tg.Hyperparameters({"SEQ_LEN_SCHEDULE": spec})


# -----------------------------------------------------------------------------
# 7. EMA
# -----------------------------------------------------------------------------


def test_ema_closed_form_and_copy_to():
    model = nn.Linear(3, 2)
    decay = 0.8
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-2.0)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    ema = tg.EMA(model)
    history = []
    for i in range(1, 6):
        with torch.no_grad():
            model.weight.copy_(torch.full((2, 3), float(i * i)))
            model.bias.copy_(torch.full((2,), -3.0 * i))
        history.append({k: v.clone() for k, v in model.state_dict().items()})
        ema.update(model, decay)
    k = len(history)
    for name in w0:
        closed = decay**k * w0[name] + sum((1 - decay) * decay ** (k - i) * w[name] for i, w in enumerate(history, 1))
        assert torch.allclose(ema.shadow[name], closed, atol=1e-5), name
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(
        0.8**5 + 0.2 * sum(0.8 ** (5 - i) * i * i for i in range(1, 6)), rel=1e-6
    )
    ema.copy_to(model)
    for name, v in model.state_dict().items():
        assert torch.equal(v, ema.shadow[name])
    assert not torch.equal(model.weight, history[-1]["weight"])

    low = nn.Linear(3, 2).bfloat16()  # copy_to keeps the model's dtype
    ema.copy_to(low)
    assert low.weight.dtype == torch.bfloat16
    assert torch.allclose(low.weight.float(), ema.shadow["weight"], rtol=1e-2)


# -----------------------------------------------------------------------------
# 8. Hyperparameters
# -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, parts",
    [
        ({"NUM_LAYERS": "abc"}, ["NUM_LAYERS", "'abc'", "int"]),
        ({"NUM_LAYERS": "0"}, ["NUM_LAYERS", "'0'", "[1, 64]"]),
        ({"NUM_LAYERS": "2.5"}, ["NUM_LAYERS", "'2.5'", "int"]),
        ({"MLP_ACT": "gelu"}, ["MLP_ACT", "'gelu'", "leaky_relu2", "relu2"]),
        ({"MATRIX_LR": "fast"}, ["MATRIX_LR", "'fast'", "float"]),
        ({"MODEL_DIM": "100"}, ["MODEL_DIM", "100", "divisible by NUM_HEADS"]),
        ({"NUM_KV_HEADS": "3"}, ["NUM_HEADS", "8", "multiple of NUM_KV_HEADS"]),
        ({"ROPE_DIMS": "7"}, ["ROPE_DIMS", "7", "even"]),
        ({"LOOP_END": "11"}, ["LOOP_END", "11", "NUM_LAYERS"]),
        ({"PARALLEL_START_LAYER": "4"}, ["PARALLEL_START_LAYER", "4", "LOOP_END"]),
        ({"TTT_SHORT_CHUNKS": "256:8,100:4"}, ["TTT_SHORT_CHUNKS", "increasing"]),
        ({"NUM_LAYER": "4"}, ["NUM_LAYER is not a setting", "did you mean NUM_LAYERS?"]),  # misspelt: never ignored
        ({"EVAL_STRIDE": "512", "EVAL_SEQ_LEN": "128"}, ["EVAL_STRIDE=512 must be <= EVAL_SEQ_LEN=128", "unscored"]),
        ({"TTT_CHUNK": "64", "TTT_CONTEXT": "32"}, ["TTT chunk 64", "must be <= TTT_CONTEXT=32"]),
        ({"TTT_SHORT_CHUNKS": "100:48", "TTT_CONTEXT": "40", "TTT_CHUNK": "8"}, ["TTT chunk 48", "TTT_CONTEXT=40"]),
        ({"MATRIXLR": "0.1"}, ["MATRIXLR is not a setting", "did you mean MATRIX_LR?"]),
        ({"TTT_LORA_RANKS": "8"}, ["TTT_LORA_RANKS", "did you mean TTT_LORA_RANK?"]),
        ({"NGRAM_BETA": "2"}, ["NGRAM_BETA", "did you mean NGRAM_"]),  # our prefix: always one of ours
        ({"TTT_SHORT_CHUNKS": "256-8"}, ["TTT_SHORT_CHUNKS", "below:chunk"]),
        ({"TTT_SHORT_CHUNKS": "256:0"}, ["TTT_SHORT_CHUNKS", "below:chunk"]),
        ({"num_layers": "4"}, ["num_layers is not a setting", "did you mean NUM_LAYERS?"]),  # env names are exact
        ({"RUN_ID": "../escaped"}, ["RUN_ID='../escaped'", "a file name"]),  # its files stay in LOG_DIR
        ({"RUN_ID": "a/b"}, ["RUN_ID='a/b'", "a file name"]),
        ({"TTT_LORA_TARGETS": "o,up"}, ["TTT_LORA_TARGETS='o,up'", "subset of q,k,v,o,mlp,head"]),
        ({"TTT_LORA_TARGETS": ""}, ["TTT_LORA_TARGETS=''", "subset of q,k,v,o,mlp,head"]),
    ],
)
def test_bad_hyperparameter_message(env, parts):
    with pytest.raises(tg.HyperparameterError) as info:
        tg.Hyperparameters(env)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


def test_default_hyperparameters_are_the_flagship():
    hp = tg.Hyperparameters({})
    expected = dict(
        num_layers=11,
        model_dim=512,
        num_heads=8,
        num_kv_heads=4,
        vocab_size=8192,
        train_batch_tokens=786432,
        train_seq_len=3072,
        matrix_lr=0.028,  # the final record's (#2135, from #2060)
        ema_horizon_frac=0.05831,  # 0.9965 a step at the flagship's 4,900 (test_schedules_are_the_flagships...)
        qk_gain_init=5.25,  # #1953's
        rope_dims=16,
        logit_softcap=30.0,
        logit_asym=1,
        muon_wd=0.095,
        grad_clip_norm=0.3,
        eval_seq_len=2560,
        ttt_context=2560,  # the record's (#2135), with its short-document chunks (#2014)
        lora_targets=["o", "mlp", "head"],  # #2130's: no K, Q or V
        ttt_wd=2.0,
        ttt_sgd_batch_tokens=32768,
        ttt_lr=8e-5,
        ttt_phases=1,
        ttt_phase_docs=2500,
        gptq_calibration_batches=32,
        ngram_tilt=1,
        ngram_order=16,
        ngram_threshold=0.8,
        ngram_boost=2.625,
    )
    assert {k: getattr(hp, k) for k in expected} == expected
    assert hp.seq_len_schedule_parsed == [(1024, 0.1), (2048, 0.7), (3072, 1.0)]  # progressive, as #2014
    assert hp.ttt_short_chunks_parsed == [(256, 8), (2000, 24)]
    # TRAIN_SEQ_LEN alone: that length throughout; both set: the schedule as given
    assert tg.Hyperparameters({"TRAIN_SEQ_LEN": "256"}).seq_len_schedule_parsed == [(256, 1.0)]
    both = {"TRAIN_SEQ_LEN": "256", "SEQ_LEN_SCHEDULE": "128@0.5,256@1.0"}
    assert tg.Hyperparameters(both).seq_len_schedule_parsed == [(128, 0.5), (256, 1.0)]
    assert tg.Hyperparameters({"NUM_LAYERS": "7"}).num_layers == 7  # the env really is read
    others = {
        "LOG_LEVEL": "x",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    assert tg.Hyperparameters(others).num_layers == 11  # other programs' variables are not ours to refuse


def test_flagship_parameter_count():
    with torch.device("meta"):  # the real constructor, without spending seconds on 36M random inits
        model = tg.GPT(tg.Hyperparameters({}))
    n = sum(p.numel() for p in model.parameters())
    print(f"flagship parameters: {n:,} (public record: 35,945,671)")
    assert 35_000_000 <= n <= 37_000_000


# -----------------------------------------------------------------------------
# 9. Attention backends
# -----------------------------------------------------------------------------


def _packed_qkv(seed=13, B=2, T=32, H=4, Hkv=2, D=16):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 64, (B, T), generator=gen)
    tokens[0, [9, 20, 27]] = tg.BOS_ID  # several documents per row, different in each row
    tokens[1, [5, 6, 30]] = tg.BOS_ID
    q = torch.randn(B, T, H, D, generator=gen)
    k, v = torch.randn(B, T, Hkv, D, generator=gen), torch.randn(B, T, Hkv, D, generator=gen)
    return tokens, q, k, v


def _reference_attention(tokens, q, k, v):
    """Naive per-position loop: softmax over earlier positions of the same document, GQA by h // rep."""
    B, T, H, D = q.shape
    rep = H // k.size(2)
    out = torch.zeros_like(q)
    for b in range(B):
        starts = [t for t in range(T) if t == 0 or tokens[b, t] == tg.BOS_ID]
        for t in range(T):
            s = max(a for a in starts if a <= t)
            for h in range(H):
                w = torch.softmax(k[b, s : t + 1, h // rep] @ q[b, t, h] / math.sqrt(D), dim=0)
                out[b, t, h] = w @ v[b, s : t + 1, h // rep]
    return out


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_attend_matches_document_masked_reference(backend):
    if backend == "flex" and tg.flex_attention is None:
        pytest.skip("this torch has no flex attention")
    tokens, q, k, v = _packed_qkv()
    out = tg.attend(q, k, v, tg.make_layout(tokens, backend))
    assert out.shape == q.shape
    assert torch.allclose(out, _reference_attention(tokens, q, k, v), atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_attend_sdpa_and_flex_agree():
    if tg.flex_attention is None:
        pytest.skip("this torch has no flex attention")
    tokens, q, k, v = _packed_qkv(seed=14)
    a = tg.attend(q, k, v, tg.make_layout(tokens, "sdpa"))
    b = tg.attend(q, k, v, tg.make_layout(tokens, "flex"))
    assert (a - b).abs().max() < 1e-5


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_document_mask_isolates_later_documents(backend):
    if backend == "flex" and tg.flex_attention is None:
        pytest.skip("this torch has no flex attention")
    tokens, q, k, v = _packed_qkv(seed=15)
    layout = tg.make_layout(tokens, backend)
    k2, v2 = k.clone(), v.clone()
    k2[0, 9:20] += 5 * torch.randn(11, k.size(2), k.size(3))  # row 0's second document (BOS at 9 .. 19)
    v2[0, 9:20] -= 3.0
    a, b = tg.attend(q, k, v, layout), tg.attend(q, k2, v2, layout)
    assert torch.equal(a[0, :9], b[0, :9])  # earlier document
    assert (a[0, 9:20] - b[0, 9:20]).abs().amax(-1).min() > 1e-3  # the changed document itself
    assert torch.allclose(a[0, 20:], b[0, 20:], atol=0, rtol=0)  # later documents: exactly unchanged
    assert torch.equal(a[1], b[1])  # other rows


def test_cpu_bf16_runs_the_matmuls_in_bf16_through_the_scoring_path():
    """CPU_BF16=1: run_rows (every scorer's forward) runs the model's Linear layers in bf16 on CPU, through the
    autocast the CUDA path uses; the NLL stays float32 and near float32's. CPU_BF16=0: float32 throughout."""
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(2, 64, (161,), generator=gen)
    tokens[[0, 50, 120]] = tg.BOS_ID
    val = tg.ValData(tokens.numpy().astype("int64"), torch.ones(161, dtype=torch.long).numpy(), "test")
    rows = tg.pack_rows(tg.eval_segments(val.tokens, 32, 0), 32)
    weights = randomize(tg.GPT(small_hp())).state_dict()
    out = {}
    for bf16 in (0, 1):
        model = tg.GPT(small_hp(CPU_BF16=bf16))
        model.load_state_dict(weights)
        dtypes = []
        model.blocks[0].attn.c_q.register_forward_hook(lambda m, i, o, seen=dtypes: seen.append(o.dtype))
        with torch.no_grad():
            nll, _, _ = tg.run_rows(model, rows, val, 32, "sdpa", torch.device("cpu"))
        assert set(dtypes) == {torch.bfloat16 if bf16 else torch.float32} and nll.dtype == torch.float32
        out[bf16] = nll
    assert 0 < (out[0] - out[1]).abs().max() < 0.1


@pytest.mark.parametrize("n", range(1, 17))
def test_num_layers_alone_is_valid_at_every_depth(n):
    """NUM_LAYERS=N alone: the looped segment, the first parallel layer and XSA's span follow the depth (the
    flagship's elevenths), so every N builds and runs; at 11 they are the flagship's own."""
    hp = tg.Hyperparameters({"NUM_LAYERS": str(n), "MODEL_DIM": "32", "NUM_HEADS": "2", "NUM_KV_HEADS": "1",
                             "ROPE_DIMS": "4", "VOCAB_SIZE": "64", "GATE_WINDOW": "8"})  # fmt: skip
    assert 0 <= hp.loop_start <= hp.loop_end < hp.parallel_start_layer <= n
    assert hp.xsa_last_n == n
    model = tg.GPT(hp)
    model.looping = True
    x = torch.randint(2, 64, (1, 16))
    assert torch.isfinite(model(x, x, tg.make_layout(x, "sdpa"))).all()
    if n == 11:
        assert (hp.loop_start, hp.loop_end, hp.parallel_start_layer) == (3, 5, 8)
    explicit = tg.Hyperparameters({"NUM_LAYERS": "8", "LOOP_START": "1", "LOOP_END": "2"})
    assert (explicit.loop_start, explicit.loop_end, explicit.parallel_start_layer) == (1, 2, 5)  # set ones stay


def test_ttt_adapters_are_the_targets_named():
    """TTT_LORA_TARGETS picks the adapters (the flagship's: O, the MLP and the head, as #2130); a non-zero B on
    each named one changes the output (the switch reaches the forward); test_bad_hyperparameter_message: a
    name outside the set is refused."""
    for targets in ("o,mlp,head", "q,k,v,o,mlp,head", "k"):
        hp = tiny_hp(TTT_LORA_TARGETS=targets)
        torch.manual_seed(0)
        model, lora = randomize(tg.GPT(hp)), tg.LoRA(hp, 2, len(tg.GPT(hp).virtual_layers()), 0)
        assert set(lora.A) == set(lora.B) == set(targets.split(","))
        a = lora.A[targets.split(",")[0]]  # drawn as nn.Linear's: uniform within 1/sqrt(fan-in)
        assert a.abs().max() <= 1 / math.sqrt(a.size(-2)) and a.std() > 0.5 / math.sqrt(3 * a.size(-2))
        x = torch.randint(2, 1024, (2, 16))
        layout = tg.make_layout(x, "sdpa")
        for key in targets.split(","):
            with torch.no_grad():
                before = model(x, x, layout, lora)
                lora.B[key].normal_()
            assert not torch.allclose(model(x, x, layout, lora), before)

"""The token-only n-gram tilt and AsymLogit: the hints against a running n-gram table, causality of the hints,
normalisation of the tilted distribution through the model's one forward, the gain on a planted repetition,
and the asymmetric logit caps (trained, and adapted by TTT's global SGD)."""

import collections

import numpy as np
import pytest
import torch

import train_gpt as tg
from tests.helpers import randomize, tiny_hp

CPU = torch.device("cpu")


def running_table_hints(tokens: np.ndarray, order: int, threshold: float) -> np.ndarray:
    """The definition, one position at a time: a table of every context's continuations seen so far."""
    hints, seen = np.full(len(tokens), -1), collections.defaultdict(list)
    for j in range(order, len(tokens)):
        followers = seen[tuple(tokens[j - order : j])]
        if followers and followers.count(followers[-1]) >= threshold * len(followers):
            hints[j] = followers[-1]
        followers.append(tokens[j])
    return hints


@pytest.mark.parametrize("order, threshold", [(1, 0.3), (3, 0.6), (4, 0.8), (16, 0.8)])
def test_hints_are_those_of_a_running_ngram_table(order, threshold):
    gen = np.random.default_rng(order)
    base = gen.integers(0, 5, 400)
    tokens = np.concatenate([base, base[:60], gen.integers(0, 3, 300), base[100:200]])  # repeats and noise
    hints = tg.ngram_hints(torch.from_numpy(tokens), order, threshold).numpy()
    assert np.array_equal(hints, running_table_hints(tokens, order, threshold))
    assert (hints >= 0).sum() > 20


def test_a_hint_reads_only_the_tokens_before_it():
    """C1 for the hints alone: rewriting every token from t on changes no hint at or before t."""
    gen = np.random.default_rng(0)
    tokens = np.tile(gen.integers(0, 50, 40), 30)
    base = tg.ngram_hints(torch.from_numpy(tokens), 4, 0.8).numpy()
    for t in (100, 555, 1000):
        changed = tokens.copy()
        changed[t:] = gen.integers(0, 50, len(tokens) - t)
        hints = tg.ngram_hints(torch.from_numpy(changed), 4, 0.8).numpy()
        assert np.array_equal(hints[: t + 1], base[: t + 1]) and not np.array_equal(hints, base)


def small_model(**over):
    hp = tiny_hp(NUM_LAYERS=2, MODEL_DIM=32, NUM_HEADS=2, NUM_KV_HEADS=1, ROPE_DIMS=4, LOOP_START=0, LOOP_END=0,
                 PARALLEL_START_LAYER=2, XSA_LAST_N=2, VOCAB_SIZE=64, GATE_WINDOW=8, **over)  # fmt: skip
    torch.manual_seed(0)
    return hp, randomize(tg.GPT(hp), std=0.2)


def test_the_tilted_distribution_is_a_full_softmax_that_sums_to_one():
    """C2 through the model's forward: the NLL of every possible target, at every position, with hints at some
    positions, exponentiates to probabilities summing to 1; the hinted token's probability rises."""
    hp, model = small_model()
    T, V = 24, hp.vocab_size
    x = torch.randint(2, V, (1, T), generator=torch.Generator().manual_seed(1))
    hints = torch.full((1, T), -1)
    hints[0, ::3] = torch.arange(0, T, 3) % V  # a hint at every third position
    xs, ys = x.expand(V, T), torch.arange(V)[:, None].expand(V, T)  # row v: every target is v
    with torch.no_grad():
        layout = tg.make_layout(xs, "sdpa")
        tilted, plain = (model(xs, ys, layout, None, h) for h in (hints.expand(V, T), None))
    assert torch.allclose(torch.exp(-tilted.double()).sum(0), torch.ones(T, dtype=torch.float64), atol=1e-5)
    hinted = hints[0] >= 0
    gain = (plain - tilted)[hints[0].clamp_min(0), torch.arange(T)]  # NLL drop of the hinted token
    assert (gain[hinted] > 0).all() and torch.equal(tilted[:, ~hinted], plain[:, ~hinted])


def test_a_planted_repetition_is_predicted_better_with_the_tilt():
    """The real evaluation path (with_hints, evaluate): a document that repeats a 64-token passage, scored by a
    model that cannot copy; the tilt lowers the loss of the repeat and leaves everything else as it was."""
    hp, model = small_model(EVAL_SEQ_LEN=128, EVAL_STRIDE=0, TTT_ENABLED=0, NGRAM_ORDER=8)
    gen = np.random.default_rng(3)
    passage = gen.integers(2, hp.vocab_size, 64)
    tokens = np.concatenate([[1], gen.integers(2, hp.vocab_size, 100), passage, gen.integers(2, 64, 50), passage,
                             [1], gen.integers(2, hp.vocab_size, 80), [1]])  # fmt: skip
    val = tg.ValData(tokens.astype(np.int64), np.ones(len(tokens), np.int64), "ones")
    tilted = tg.with_hints(val, hp, CPU)
    repeat = np.zeros(len(tokens), bool)
    repeat[1 + 100 + 64 + 50 + 8 : 1 + 100 + 64 + 50 + 64] = True  # the repeat, after its first 8 tokens
    assert (tilted.hints[repeat] == tokens[repeat]).all() and (tilted.hints[~repeat] >= 0).sum() <= 1  # + its end
    plain, with_tilt = (tg.evaluate(model, v, hp, 0, "sdpa", CPU) for v in (val, tilted))
    saved = (plain["val_loss"] - with_tilt["val_loss"]) * plain["tokens"]  # nats over the stream
    assert plain["tokens"] == with_tilt["tokens"] == len(tokens) - 1
    assert saved > repeat.sum() * 0.5 * hp.ngram_boost  # most of the boost on each hinted, correct target


def test_asymmetric_caps_bound_each_sign_and_learn():
    """LOGIT_ASYM: positive logits stay under LOGIT_SOFTCAP * exp(s0), negative over -LOGIT_SOFTCAP * exp(s1); the
    caps get gradients; LOGIT_ASYM=0 is the one symmetric cap."""
    hp, model = small_model(LOGIT_SOFTCAP=5.0)
    with torch.no_grad():
        model.logit_caps.copy_(torch.tensor([np.log(2.0), 0.0]))
    z = model.logits(torch.randn(2, 8, 32) * 100)  # huge pre-cap logits: both caps are reached
    assert 9.9 < z.max() <= 10.0 and -5.0 <= z.min() < -4.9
    x = torch.randint(2, 64, (2, 16))
    model(x, x.roll(-1, 1), tg.make_layout(x, "sdpa")).mean().backward()
    assert model.logit_caps.grad is not None and (model.logit_caps.grad != 0).all()
    sym_hp, sym = small_model(LOGIT_SOFTCAP=5.0, LOGIT_ASYM=0)
    assert sym.logit_caps is None and sym.logits(torch.randn(2, 8, 32) * 100).abs().max() <= 5.0
    assert "logit_caps" in dict(model.named_parameters()) and "logit_caps" not in dict(sym.named_parameters())


def test_global_sgd_adapts_the_logit_caps():
    hp, model = small_model(TTT_ENABLED=1, TTT_CONTEXT=64, TTT_SGD_BATCH_TOKENS=128, TTT_SGD_LR=0.5)
    gen = np.random.default_rng(0)
    tokens = np.concatenate([[1], gen.integers(2, 64, 300), [1], gen.integers(2, 64, 200), [1]]).astype(np.int64)
    val = tg.ValData(tokens, np.ones(len(tokens), np.int64), "ones")
    before = model.logit_caps.detach().clone()
    steps = tg.global_sgd(model, val, tg.doc_spans(tokens), hp, "sdpa", CPU, 0, 1)
    assert steps > 0 and not torch.equal(model.logit_caps.detach(), before)

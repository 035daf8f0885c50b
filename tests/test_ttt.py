"""The challenge's evaluation rules (C1-C4), tested on the real scoring path with TTT switched on."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt as tg
from tests.helpers import TINY, randomize, tiny_hp

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TTT = dict(TTT_ENABLED=1, TTT_CHUNK=32, TTT_CONTEXT=256, TTT_BATCH_DOCS=2, TTT_LORA_RANK=4, TTT_LR=0.01,
           TTT_PHASES=1, TTT_PHASE_DOCS=2, TTT_SGD_BATCH_TOKENS=1024, TTT_SGD_LR=0.05)  # fmt: skip
# Phased: the two longest documents are scored, the base model takes global SGD on them, then the other two.


@pytest.fixture(scope="module")
def setup(sp1024_dataset):
    """Four real validation documents (3,872 targets) and a randomized toy model with looping on."""
    hp = tiny_hp(DATA_PATH=sp1024_dataset, **TTT)
    val = tg.load_validation(hp, tg.load_tokenizer(str(sp1024_dataset / "tokenizer.model"), 1024))
    end = np.flatnonzero(val.tokens == tg.BOS_ID)[4] + 1
    val = tg.ValData(val.tokens[:end].copy(), val.target_bytes[:end].copy(), val.byte_source)
    torch.manual_seed(0)
    model = randomize(tg.GPT(hp), std=0.05)
    model.looping = True
    return hp, val, model


def run_ttt(setup, tokens=None, **over):
    """The real TTT path with a record hook: per target its loss, how often it was scored, and when (the event
    index into `states`, which holds the adapter state, the adapter row and the base model state it saw)."""
    hp, val, model = setup
    if tokens is not None:
        val = tg.ValData(tokens, val.target_bytes, val.byte_source)
    losses, counts, states, bases = np.full(len(val.tokens), np.nan), np.zeros(len(val.tokens), int), [], []
    event = np.full(len(val.tokens), -1)  # when each target was scored: the scoring order

    def record(segs, nll, lora, rows):
        if not bases or not torch.equal(bases[-1]["tok_emb.weight"], model.tok_emb.weight):  # global SGD ran
            bases.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        adapters = {k: v.detach().clone() for k, v in lora.state_dict().items()}
        for r, (start, length, frm) in enumerate(segs):
            pos = np.arange(start + 1 + frm, start + 1 + length)
            losses[pos], counts[pos], event[pos] = nll[r, frm:length], counts[pos] + 1, len(states)
            states.append((adapters, rows[r], bases[-1]))

    result = tg.ttt_evaluate(model, val, tiny_hp(DATA_PATH=hp.data_path, **{**TTT, **over}), "sdpa", CPU, record=record)
    return result, losses, counts, states, event


def test_c4_every_target_is_scored_exactly_once(setup):
    hp, val, _ = setup
    result, _, counts, _, _ = run_ttt(setup)
    assert counts[0] == 0 and (counts[1:] == 1).all()  # position 0 (the first BOS) is never a target
    assert result["tokens"] == len(val.tokens) - 1 and result["bytes"] == int(val.target_bytes[1:].sum())


def test_c1_later_tokens_never_change_earlier_losses(setup):
    """Causal in the order of scoring (longest documents first; adapters' A stay warm across batches, and
    may only have learned from targets already scored): changing the token at t changes no loss scored
    before it, nor the earlier targets of its own chunk."""
    hp, val, _ = setup
    _, base, _, _, event = run_ttt(setup)
    starts = np.flatnonzero(val.tokens == tg.BOS_ID)
    for t in (starts[1] + 40, starts[3] + 100, starts[0] + 300):  # inside chunks of three documents
        before = (event < event[t]) | ((event == event[t]) & (np.arange(len(event)) < t))
        before[0] = False
        later = ~before & (val.tokens != tg.BOS_ID)
        later[0] = False
        tokens = val.tokens.copy()
        tokens[later] = (val.tokens[later] * 7 + 3) % 1000 + 8  # every token scored from t on is rewritten
        _, changed, _, _, _ = run_ttt(setup, tokens)
        assert before.sum() > 100 and np.array_equal(changed[before], base[before])
        assert not np.allclose(changed[later], base[later])


def test_c2_the_scored_distribution_is_normalised_over_the_whole_vocabulary(setup):
    """Rebuilt from the adapter state a chunk was scored with: a softmax over all 1,024 tokens that sums to 1,
    whose -log p(target) is exactly the recorded loss."""
    hp, val, model = setup
    _, losses, _, states, event = run_ttt(setup)
    starts = np.flatnonzero(val.tokens == tg.BOS_ID)
    lora = tg.LoRA(tiny_hp(**TTT), TTT["TTT_BATCH_DOCS"], len(model.virtual_layers()))
    for e in (3, len(states) // 2, len(states) - 5):  # adapters that have taken steps
        pos = np.flatnonzero(event == e)
        a = starts[starts < pos.min()].max()
        end = pos.max() - a
        lo = max(0, end - TTT["TTT_CONTEXT"])
        x = torch.tensor(val.tokens[a + lo : a + end])[None]
        state, row, base = states[e]
        lora.load_state_dict(state)
        lora.rows = torch.tensor([row])
        assert any(v.abs().sum() > 0 for k, v in state.items() if k.startswith("B."))
        scorer = copy.deepcopy(model)
        scorer.load_state_dict(base)
        with torch.no_grad():
            logp = torch.log_softmax(
                scorer.logits(scorer.hidden(x, tg.make_layout(x, "sdpa"), lora), lora).double(), -1
            )
        assert logp.shape[-1] == 1024 and torch.allclose(
            logp.exp().sum(-1), torch.ones(1, x.size(1), dtype=torch.float64)
        )
        nll = -logp[0, -len(pos) :].gather(-1, torch.tensor(val.tokens[pos])[:, None]).squeeze(-1)
        assert np.allclose(nll.numpy(), losses[pos], rtol=1e-5, atol=1e-5)


def test_c3_each_chunk_is_scored_before_any_step_on_it(setup):
    """A chunk's recorded losses come from the adapters as they were before the step on that chunk: changing
    the chunk's last target changes none of its other recorded losses, yet (through the step) later ones."""
    hp, val, _ = setup
    _, base, _, _, _ = run_ttt(setup)
    a, n = tg.doc_spans(val.tokens)[1]  # a 1,259-target document: many chunks
    last = a + 1 + 3 * TTT["TTT_CHUNK"] - 1  # the last target of its fourth chunk
    tokens = val.tokens.copy()
    tokens[last] = (tokens[last] + 1) % 1000 + 8
    _, changed, _, _, _ = run_ttt(setup, tokens)
    chunk = slice(last - TTT["TTT_CHUNK"] + 1, last)
    assert np.array_equal(changed[chunk], base[chunk])
    assert not np.allclose(changed[last + 1 : a + 1 + n], base[last + 1 : a + 1 + n])


def test_adapters_change_the_scores_and_zero_lr_is_the_plain_model(setup):
    hp, val, model = setup
    plain = tg.evaluate(model, val, tiny_hp(EVAL_SEQ_LEN=256, VAL_BATCH_SIZE=4096), 32, "sdpa", CPU)
    frozen, *_ = run_ttt(setup, TTT_LR=0, TTT_SGD_LR=0)
    trained, *_ = run_ttt(setup, TTT_LR=1e-3, TTT_PHASES=0)
    assert frozen["val_bpb"] == pytest.approx(plain["val_bpb"], rel=1e-9)  # same contexts (<= 256), no update
    assert trained["val_bpb"] < frozen["val_bpb"]


def test_phase_boundaries_follow_the_scored_documents():
    flagship = tg.Hyperparameters({})  # 3 phases over the first 2,500 of 50,000 documents, batches of 64
    assert tg.phase_boundaries(flagship, 50_000, 782) == [(14, 833), (27, 1666), (40, 2500)]
    small = tiny_hp(TTT_BATCH_DOCS=2, TTT_PHASES=3, TTT_PHASE_DOCS=4)
    assert tg.phase_boundaries(small, 4, 2) == [(1, 2)]  # 1 doc rounds up to batch 1 (kept: 2); 4 leaves none after
    assert tg.phase_boundaries(tiny_hp(TTT_PHASES=0), 100, 34) == []


def test_global_sgd_phases_train_the_base_model_and_leave_it_as_it_was(setup):
    """Phases move the score; with a zero SGD rate they are exact no-ops (nothing else differs: the adapters'
    A is drawn per batch); and the model handed in is unchanged afterwards."""
    hp, val, model = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cold = dict(TTT_WARM_A=0)
    none, *_ = run_ttt(setup, TTT_PHASES=0, **cold)
    idle, *_ = run_ttt(setup, TTT_SGD_LR=0, **cold)
    phased, _, counts, _, _ = run_ttt(setup, **cold)
    assert idle["val_loss"] == none["val_loss"] and phased["val_loss"] != none["val_loss"]
    assert counts[0] == 0 and (counts[1:] == 1).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def _ranked_ttt(rank, world, port, hp, val, out):
    """One rank of a gloo group: the plain evaluation and phased TTT of the same seeded model."""
    import torch.distributed as dist

    if world > 1:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = randomize(tg.GPT(hp), std=0.05)
    model.looping = True
    plain = tg.evaluate(model, val, hp, 32, "sdpa", CPU, rank, world)
    ttt = tg.ttt_evaluate(model, val, hp, "sdpa", CPU, rank, world)
    if rank == 0:
        Path(out).write_text(json.dumps([plain, ttt]))
    if world > 1:  # both results are out: leave without interpreter teardown, where gloo's threads once aborted (CI)
        dist.barrier()
        os._exit(0)


def test_the_result_is_the_same_for_one_and_two_ranks(setup, tmp_path):
    """Eight documents, four TTT batches, a phase after two: each rank scores its own batches, both take
    global SGD on the documents both scored, and the sums meet in one all-reduce."""
    _, val, _ = setup
    ends = np.flatnonzero(val.tokens == tg.BOS_ID)
    short = np.concatenate([val.tokens[ends[i] : ends[i] + n] for i in range(4) for n in (90, 130)] + [[1]])
    small = tg.ValData(short, np.ones_like(short), "ones")
    hp = tiny_hp(**{**TTT, "TTT_PHASE_DOCS": 4, "TTT_WARM_A": 0, "TTT_SGD_BATCH_TOKENS": 512})
    _ranked_ttt(0, 1, 0, hp, small, tmp_path / "one.json")
    port = 29500 + os.getpid() % 1000
    torch.multiprocessing.spawn(_ranked_ttt, args=(2, port, hp, small, str(tmp_path / "two.json")), nprocs=2)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"] == len(short) - 1 and a["bytes"] == b["bytes"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert one[1]["val_loss"] != pytest.approx(one[0]["val_loss"], rel=1e-4)  # TTT did something


def test_eval_only_scores_a_saved_artifact_and_reports_the_clock(small_dataset, tmp_path):
    data = {"DATA_PATH": str(small_dataset), "TOKENIZER_PATH": str(small_dataset / "tokenizer.model")}
    env = {**os.environ, **TINY, **data, "LOG_DIR": str(tmp_path), "EVAL_STRIDE": "0", "ITERATIONS": "2"}
    run = lambda **e: subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], env={**env, **e}, cwd=tmp_path,
                                     capture_output=True, text=True, timeout=300)  # fmt: skip
    p = run(RUN_ID="train")
    assert p.returncode == 0, p.stderr[-2000:]
    p = run(RUN_ID="again", EVAL_ONLY=str(tmp_path / "train.ptz"), EVAL_MAX_SECONDS="0.001")
    assert p.returncode == 0, p.stderr[-2000:]
    trained, again = ((tmp_path / f"{r}.txt").read_text() for r in ("train", "again"))
    line = lambda log: re.search(r"^final_roundtrip_exact val_loss:[\d.]+ val_bpb:[\d.]+$", log, re.M).group(0)
    assert line(trained) == line(again) and not re.search(r"^step:\d", again, re.M)  # no training, same score
    assert re.search(r"eval_time_s:[\d.]+ load:[\d.]+ roundtrip_eval:[\d.]+", again)
    assert "eval_time_violation:" in again and "EVAL_MAX_SECONDS=0.001" in again

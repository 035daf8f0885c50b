"""The challenge's evaluation rules (C1-C4), tested on the real scoring path with TTT switched on."""

import copy
import json
import math
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
           TTT_PHASES=1, TTT_PHASE_DOCS=2, TTT_SGD_BATCH_TOKENS=1024, TTT_SGD_LR=0.05, TTT_SHORT_CHUNKS="")  # fmt: skip
# Phased: the two longest documents are scored, the base model takes global SGD on them, then the other two.
# "tilt": the flagship's evaluation on top: the n-gram tilt (order 4 here, so that real text gets hints) and
# smaller chunks for the documents under 2,000 tokens.
VARIANTS = {"plain": {}, "tilt": dict(NGRAM_ORDER=4, TTT_SHORT_CHUNKS="256:8,2000:24")}


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


BASE_RUNS: dict = {}  # the unmodified run of each variant, shared by the C1-C4 tests (module-scoped setup)


def run_ttt(setup, tokens=None, variant="plain", **over):
    if tokens is None and not over:
        if variant not in BASE_RUNS:
            BASE_RUNS[variant] = run_ttt_uncached(setup, None, variant)
        return BASE_RUNS[variant]
    return run_ttt_uncached(setup, tokens, variant, **over)


def run_ttt_uncached(setup, tokens, variant, **over):
    """The real TTT path with a record hook: per target its loss, how often it was scored, and when (the event
    index into `states`, which holds the adapter state, the adapter row and the base model state it saw). The
    "tilt" variant computes the hints from the (possibly rewritten) stream, as the evaluation does."""
    hp, val, model = setup
    hp = tiny_hp(DATA_PATH=hp.data_path, **{**TTT, **VARIANTS[variant], **over})
    if tokens is not None:
        val = tg.ValData(tokens, val.target_bytes, val.byte_source)
    if variant == "tilt":
        val = tg.with_hints(val, hp, CPU)
        assert (val.hints >= 0).sum() > 100
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

    result = tg.ttt_evaluate(model, val, hp, "sdpa", CPU, record=record)
    return result, losses, counts, states, event


@pytest.mark.parametrize("variant", VARIANTS)
def test_c4_every_target_is_scored_exactly_once(setup, variant):
    hp, val, _ = setup
    result, _, counts, _, _ = run_ttt(setup, variant=variant)
    assert counts[0] == 0 and (counts[1:] == 1).all()  # position 0 (the first BOS) is never a target
    assert result["tokens"] == len(val.tokens) - 1 and result["bytes"] == int(val.target_bytes[1:].sum())


@pytest.mark.parametrize("variant", VARIANTS)
def test_c1_later_tokens_never_change_earlier_losses(setup, variant):
    """Causal in the order of scoring: documents longest first (tg.doc_spans), each left to right. Adapters'
    A stay warm across batches and the base model takes global SGD, on documents scored before; with the tilt,
    the hints are computed from the rewritten stream. Rewriting every token from t on (in that order) changes
    no loss scored before it."""
    hp, val, _ = setup
    _, base, _, _, _ = run_ttt(setup, variant=variant)
    rank = np.zeros(len(val.tokens), int)  # each target's place in the scoring order
    for place, (a, n) in enumerate(tg.doc_spans(val.tokens, longest_first=True)):
        rank[a + 1 : a + n + 1] = place * len(val.tokens) + np.arange(1, n + 1)
    starts = np.flatnonzero(val.tokens == tg.BOS_ID)
    for t in (starts[1] + 40, starts[3] + 100, starts[0] + 300)[: 3 if variant == "plain" else 2]:  # in 3 docs
        before, later = rank < rank[t], rank >= rank[t]
        before[0] = False
        later &= val.tokens != tg.BOS_ID
        tokens = val.tokens.copy()
        tokens[later] = (val.tokens[later] * 7 + 3) % 1000 + 8  # every token scored from t on is rewritten
        _, changed, _, _, _ = run_ttt(setup, tokens, variant)
        assert before.sum() > 30 and np.array_equal(changed[before], base[before])
        assert not np.allclose(changed[later], base[later])


@pytest.mark.parametrize("variant", VARIANTS)
def test_c2_the_scored_distribution_is_normalised_over_the_whole_vocabulary(setup, variant):
    """Rebuilt from the adapter state a chunk was scored with (and the tilt's hints): a softmax over all 1,024
    tokens that sums to 1, whose -log p(target) is exactly the recorded loss."""
    hp, val, model = setup
    _, losses, _, states, event = run_ttt(setup, variant=variant)
    hints = tg.with_hints(val, tiny_hp(**VARIANTS[variant]), CPU).hints if variant == "tilt" else None
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
        h = None if hints is None else torch.tensor(hints[a + lo + 1 : a + end + 1])[None]
        with torch.no_grad():
            logp = torch.log_softmax(
                scorer.logits(scorer.hidden(x, tg.make_layout(x, "sdpa"), lora), lora, h).double(), -1
            )
        assert logp.shape[-1] == 1024 and torch.allclose(
            logp.exp().sum(-1), torch.ones(1, x.size(1), dtype=torch.float64)
        )
        nll = -logp[0, -len(pos) :].gather(-1, torch.tensor(val.tokens[pos])[:, None]).squeeze(-1)
        assert np.allclose(nll.numpy(), losses[pos], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_c3_each_chunk_is_scored_before_any_step_on_it(setup, variant):
    """A chunk's recorded losses come from the adapters as they were before the step on that chunk: changing
    the chunk's last target changes none of its other recorded losses, yet (through the step) later ones."""
    hp, val, _ = setup
    _, base, _, _, _ = run_ttt(setup, variant=variant)
    a, n = tg.doc_spans(val.tokens)[1]  # a 1,259-target document: many chunks
    size = tg.doc_chunks(tiny_hp(**{**TTT, **VARIANTS[variant]}), a, n)[0][1]  # 32, or 24 for short documents
    last = a + 1 + 3 * size - 1  # the last target of its third chunk
    tokens = val.tokens.copy()
    tokens[last] = (tokens[last] + 1) % 1000 + 8
    _, changed, _, _, _ = run_ttt(setup, tokens, variant)
    chunk = slice(last - size + 1, last)
    assert np.array_equal(changed[chunk], base[chunk])
    assert not np.allclose(changed[last + 1 : a + 1 + n], base[last + 1 : a + 1 + n])


def test_ttt_never_trains_on_a_documents_last_chunk(setup, monkeypatch):
    """ttt_batch's promise: a document's last chunk is scored, never trained on. In every step, the gradient that
    reaches the losses of a last chunk is exactly zero where an earlier chunk's is not; and rewriting the last
    chunk of a document that ends mid-batch (its adapter slot's A kept by the next batch, TTT_WARM_A=1, no global
    SGD) changes no loss outside that chunk."""
    hp, val, model = setup
    hp = tiny_hp(DATA_PATH=hp.data_path, **TTT)
    docs = tg.doc_spans(val.tokens)
    last = {tg.doc_chunks(hp, a, n)[-1] for a, n in docs}
    grads, real = {True: [], False: []}, tg.run_rows

    def run_rows(runner, rows, v, width, backend, device, lora=None, n_rows=0):
        nll, score, sums = real(runner, rows, v, width, backend, device, lora, n_rows)

        def seen(g):  # the gradient reaching each row's losses, from its first scored target on
            for r, (_, n, frm) in enumerate(row[0] for row in rows):
                grads[rows[r][0] in last].append(float(g[r, frm:n].abs().sum()))

        if lora is not None and nll.requires_grad:  # TTT's adapters (global SGD passes none)
            nll.register_hook(seen)
        return nll, score, sums

    monkeypatch.setattr(tg, "run_rows", run_rows)
    tg.ttt_evaluate(model, val, hp, "sdpa", CPU)
    monkeypatch.undo()
    assert grads[True] and all(g == 0 for g in grads[True])  # last chunks in steps that trained others: untouched
    assert grads[False] and all(g > 0 for g in grads[False])
    first, second = tg.doc_spans(val.tokens, longest_first=True)[:2]  # batch 0: the second ends while the first goes on
    assert second[1] < first[1] and hp.ttt_warm_a
    start, length, frm = tg.doc_chunks(hp, *second)[-1]
    chunk = np.arange(start + 1 + frm, start + 1 + length)  # its targets (the last one the next document's BOS)
    tokens = val.tokens.copy()
    tokens[chunk[:-1]] = (tokens[chunk[:-1]] * 7 + 3) % 1000 + 8
    _, base, *_ = run_ttt(setup, TTT_PHASES=0)
    _, changed, *_ = run_ttt(setup, tokens, TTT_PHASES=0)
    outside = np.ones(len(tokens), bool)
    outside[chunk], outside[0] = False, False
    assert np.array_equal(changed[outside], base[outside]) and not np.allclose(changed[chunk], base[chunk])


def test_adapters_change_the_scores_and_zero_lr_is_the_plain_model(setup):
    hp, val, model = setup
    plain = tg.evaluate(model, val, tiny_hp(EVAL_SEQ_LEN=256, VAL_BATCH_SIZE=4096), 32, "sdpa", CPU)
    frozen, *_ = run_ttt(setup, TTT_LR=0, TTT_SGD_LR=0)
    trained, *_ = run_ttt(setup, TTT_LR=1e-3, TTT_PHASES=0)
    assert frozen["val_bpb"] == pytest.approx(plain["val_bpb"], rel=1e-9)  # same contexts (<= 256), no update
    assert trained["val_bpb"] < frozen["val_bpb"]


def test_phase_boundaries_follow_the_scored_documents():
    assert tg.phase_boundaries(tg.Hyperparameters({}), 50_000, 782) == [(40, 2500)]  # the flagship: one phase
    three = tg.Hyperparameters({"TTT_PHASES": "3"})  # over the first 2,500 of 50,000 documents, batches of 64
    assert tg.phase_boundaries(three, 50_000, 782) == [(14, 833), (27, 1666), (40, 2500)]
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


def test_eval_only_scores_a_saved_artifact_and_reports_the_clock(small_dataset, tmp_path, tiny_run):
    data = {"DATA_PATH": str(small_dataset), "TOKENIZER_PATH": str(small_dataset / "tokenizer.model")}
    env = {**os.environ, **TINY, **data, "LOG_DIR": str(tmp_path), "EVAL_STRIDE": "0"}
    run = lambda **e: subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], env={**env, **e}, cwd=tmp_path,
                                     capture_output=True, text=True, timeout=300)  # fmt: skip
    p = run(RUN_ID="again", EVAL_ONLY=str(tiny_run / "run.ptz"), EVAL_MAX_SECONDS="0.001")
    assert p.returncode == 0, p.stderr[-2000:]
    trained, again = (tiny_run / "run.txt").read_text(), (tmp_path / "again.txt").read_text()
    line = lambda log: re.search(r"^final_roundtrip_exact val_loss:[\d.]+ val_bpb:[\d.]+$", log, re.M).group(0)
    assert line(trained) == line(again) and not re.search(r"^step:\d", again, re.M)  # no training, same score
    clock = r"eval_time_s:[\d.]+ eval_compiles:\d+ ngram_hints:[\d.]+ compile_warmup:[\d.]+ load:[\d.]+ roundtrip_eval:"
    assert re.search(clock, again) and "compile_warmup:on_eval_clock" in again  # its own process, its own clock
    assert "eval_time_violation:" in again and "EVAL_MAX_SECONDS=0.001" in again
    p = run(
        RUN_ID="ttt",
        EVAL_ONLY=str(tiny_run / "run.ptz"),
        TTT_ENABLED="1",
        TTT_CONTEXT="128",
        TTT_PHASES="0",
        TTT_CHUNK="128",
        TTT_BATCH_DOCS="8",  # one batch of 128-token chunks: fewer steps in a row, the same path
    )
    assert p.returncode == 0, p.stderr[-2000:]
    ttt = (tmp_path / "ttt.txt").read_text()  # with TTT the score is TTT's alone: no plain pass runs
    assert re.search(r"^ttt_adapted_docs:8/8$", ttt, re.M) and re.search(r"^final_ttt_exact val_loss:", ttt, re.M)
    assert not re.search(r"^(final_roundtrip_exact|roundtrip_eval|eval_deadline_hit)", ttt, re.M)
    # TTT says where it is: batches done of this rank's, the share of its tokens, and the projected end
    progress = re.findall(r"^ttt_progress rank_batches:(\d+)/(\d+) rank_tokens_done:([\d.]+) elapsed_s:\d+ "
                          r"projected_s:\d+ deadline_left_s:-?\d+$", ttt, re.M)  # fmt: skip
    assert progress and progress[-1][0] == progress[-1][1] and float(progress[-1][2]) == 1.0


# ----------------------------------------------------------------------------- the eval deadline


def deadline_run(setup, thp, lora, deadline):
    """(result, log lines, per target: its loss, times scored, scored plainly) of ttt_evaluate at a deadline."""
    hp, val, model = setup
    losses, counts, lines = np.full(len(val.tokens), np.nan), np.zeros(len(val.tokens), int), []
    plain = np.zeros(len(val.tokens), bool)

    def record(segs, nll, lora_, rows):
        for r, (start, length, frm) in enumerate(segs):
            pos = np.arange(start + 1 + frm, start + 1 + length)
            losses[pos], counts[pos], plain[pos] = nll[r, frm:length], counts[pos] + 1, lora_ is None

    result = tg.ttt_evaluate(model, val, thp, "sdpa", CPU, record=record, log=lines.append, lora=lora,
                             deadline=deadline)  # fmt: skip
    return result, lines, losses, counts, plain


def test_a_deadline_too_short_for_ttt_ends_in_time_and_scores_the_rest_plainly(setup):
    """Full TTT timed first; then a deadline at half that time: the run stops adapting (at its own measured
    seconds per target), every target is still scored once, the plainly scored documents get exactly the plain
    model's losses, and it ends on time; a deadline already past adapts nothing and scores everything plainly."""
    hp, val, model = setup
    thp = tiny_hp(DATA_PATH=hp.data_path, **{**TTT, "TTT_PHASES": 0})
    lora = tg.LoRA(thp, thp.ttt_batch_docs, len(model.virtual_layers()), thp.seed, CPU)
    tg.ttt_warmup(model, model, lora, thp, "sdpa", CPU, 1)
    t0 = tg.time.perf_counter()
    tg.ttt_evaluate(model, val, thp, "sdpa", CPU, lora=lora, deadline=math.inf)
    full_s = tg.time.perf_counter() - t0
    first = tg.doc_spans(val.tokens, longest_first=True)[: thp.ttt_batch_docs]  # the batch that runs before any rate
    t0 = tg.time.perf_counter()
    tg.ttt_batch(model, lora, val, first, thp, "sdpa", CPU, None)
    first_s = tg.time.perf_counter() - t0
    _, frozen, *_ = run_ttt(setup, TTT_LR=0, TTT_PHASES=0)  # the same chunks and contexts, adapters that never move
    for share in (0.5, -1.0):  # -1: the deadline passed before TTT began (a warmup longer than the budget)
        start = tg.time.perf_counter()
        deadline = start + share * full_s
        result, lines, losses, counts, plain = deadline_run(setup, thp, lora, deadline)
        ended = tg.time.perf_counter()
        adapted = re.search(r"^ttt_adapted_docs:(\d+)/(\d+)$", "\n".join(lines), re.M)
        assert adapted and int(adapted.group(1)) < int(adapted.group(2)) == 4
        assert share > 0 or int(adapted.group(1)) == 0
        assert any(line.startswith("eval_deadline_hit: time_left_s:") for line in lines)
        # the stated slack: the first batch, which runs before any rate is measured, and the plain scoring of the
        # rest, estimated at PLAIN_SHARE of TTT's seconds per target (an upper bound of it)
        assert ended <= max(deadline, start + first_s if share > 0 else start) + 0.6 * full_s + 0.5
        assert counts[0] == 0 and (counts[1:] == 1).all() and result["tokens"] == len(val.tokens) - 1
        assert plain.any() and (share > 0 or plain[1:].all())
        assert np.allclose(losses[plain], frozen[plain], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("short", ["", "50:4,200:8"])
def test_plain_chunks_give_every_target_the_context_ttt_gives_it(short):
    hp = tiny_hp(TTT_CHUNK=32, TTT_CONTEXT=100, TTT_SHORT_CHUNKS=short)
    spans = [(0, 10), (11, 96), (108, 250)]
    segs = [seg for a, n in spans for seg in tg.doc_chunks(hp, a, n, plain=True)]
    context = {}  # target position -> first input position it sees
    for start, length, frm in segs:
        for p in range(start + frm, start + length):
            assert p + 1 not in context
            context[p + 1] = start
    for a, n in spans:  # TTT: chunk c0..c0+c sees inputs from max(0, end - 100), c = 32 or the short chunk
        c = 32 if not short else 4 if n < 50 else 8 if n < 200 else 32
        for c0 in range(0, n, c):
            end = min(c0 + c, n)
            for t in range(c0, end):
                assert context[a + t + 1] == a + max(0, end - 100) or (end <= 100 and context[a + t + 1] == a)
    assert len(context) == sum(n for _, n in spans)


@pytest.mark.filterwarnings("ignore")
def test_compiled_ttt_gives_the_eager_losses_and_compiles_only_in_the_warmup(setup):
    """TTT through torch.compile (inductor, on CPU): one graph per width bucket, all made in the warmup on random
    tokens, none while scoring. With frozen adapters the per-token losses are eager's within float tolerance;
    with learning, AdamW without momentum (beta1 0, eps 1e-10) turns float noise in near-zero gradients into
    whole steps, so per-token losses drift apart and only the mean is compared."""
    from torch._dynamo.utils import counters

    hp, val, _ = setup
    # half the toy's depth and width, every technique still on: inductor's C++ builds are most of this test
    over = dict(TTT_PHASES=0, TTT_WIDTH_BUCKETS=1, TTT_BATCH_DOCS=2, NUM_LAYERS=3, MODEL_DIM=32, NUM_HEADS=2,
                NUM_KV_HEADS=1, ROPE_DIMS=4, LOOP_START=1, LOOP_END=1, NUM_LOOPS=1, PARALLEL_START_LAYER=2,
                XSA_LAST_N=3, GATE_WINDOW=8)  # fmt: skip
    torch.manual_seed(0)
    model = randomize(tg.GPT(tiny_hp(**over)), std=0.05)
    model.looping = True
    starts = np.flatnonzero(val.tokens == tg.BOS_ID)
    short = np.concatenate([val.tokens[starts[0] : starts[0] + 300], val.tokens[starts[1] : starts[1] + 120], [1]])
    small = tg.ValData(short, np.ones_like(short), "ones")  # two short documents keep the compile test short
    small = tg.with_hints(small, tiny_hp(**{**TTT, **over}, NGRAM_ORDER=4), CPU)  # the tilt, as scoring has it
    assert (small.hints >= 0).any()
    losses, means = {}, {}
    for name in ("eager", "compiled"):
        thp = tiny_hp(DATA_PATH=hp.data_path, COMPILE=2, **{**TTT, **over})
        lora = tg.LoRA(thp, thp.ttt_batch_docs, len(model.virtual_layers()), thp.seed, CPU)
        runner = tg.maybe_compile(model, thp, CPU) if name == "compiled" else model
        before = counters["stats"]["unique_graphs"]
        tg.ttt_warmup(runner, model, lora, thp, "sdpa", CPU, 1)
        warm = counters["stats"]["unique_graphs"]
        out = np.full(len(small.tokens), np.nan)

        def record(segs, nll, lora_, rows, out=out):
            for r, (start, length, frm) in enumerate(segs):
                out[start + 1 + frm : start + 1 + length] = nll[r, frm:length]

        frozen = tiny_hp(DATA_PATH=hp.data_path, **{**TTT, **over, "TTT_LR": 0})
        tg.ttt_evaluate(model, small, frozen, "sdpa", CPU, record=record, runner=runner, lora=lora)
        means[name] = tg.ttt_evaluate(model, small, thp, "sdpa", CPU, runner=runner, lora=lora)["val_loss"]
        losses[name] = out
        if name == "compiled":
            assert warm - before == 1 and counters["stats"]["unique_graphs"] == warm  # the one width, no more
    assert np.allclose(losses["compiled"][1:], losses["eager"][1:], rtol=1e-4, atol=1e-4)
    assert means["compiled"] == pytest.approx(means["eager"], rel=1e-2)


def test_ttt_memory_at_the_flagship_shape_fits_an_80_gb_gpu():
    """Counted on CPU with meta tensors: what one TTT forward keeps for its backward at every width bucket,
    plus weights and adapter state, stays under 70 GiB; doubling the tokens per forward nearly doubles it."""
    sys.path.insert(0, str(ROOT / "bench"))
    import eval_cost

    hp = tg.Hyperparameters({})
    sizes = [eval_cost.ttt_saved_bytes(hp, *tg.ttt_shape(hp, w)) for w in tg.ttt_widths(hp)]
    assert all(m["total_bytes"] < 70 * 2**30 for m in sizes)
    twice = tg.Hyperparameters({"TTT_MICRO_TOKENS": str(2 * hp.ttt_micro_tokens)})
    big = eval_cost.ttt_saved_bytes(twice, *tg.ttt_shape(twice, hp.ttt_context))
    assert big["saved_activation_bytes"] > 1.8 * sizes[-1]["saved_activation_bytes"]


def test_padded_rows_and_the_padding_segment_change_no_score(setup):
    """A compiled model gets a fixed row count and one unscored padding segment per row: the sums are those
    of the unpadded rows exactly, and the padding is one segment however long."""
    hp, val, model = setup
    rows = tg.pack_rows(tg.eval_segments(val.tokens, 128, 32), 128)[:5]
    x, y, starts, score, nbytes, _ = tg.row_arrays(rows, val, 128, n_rows=8)
    for r, row in enumerate(rows):
        used = sum(seg[1] for seg in row)
        assert starts[r, used:].sum() == (1 if used < 128 else 0) and not score[r, used:].any()
    assert starts[5:, 0].all() and starts[5:].sum() == 3 and not score[5:].any()
    with torch.no_grad():
        a = tg.run_rows(model, rows, val, 128, "sdpa", CPU)[2]
        b = tg.run_rows(model, rows, val, 128, "sdpa", CPU, n_rows=8)[2]
    assert torch.allclose(a, b, rtol=1e-12, atol=0)

"""The compile tests: the CUDA path's torch.compile(model, dynamic=False), compiled by inductor on CPU through
maybe_compile (COMPILE=2), against eager, with dynamo's graph counter read around each region. Every test
here compiles a tiny model (a few seconds each on 2 cores); they carry the `compile` mark."""

import copy
import functools
import re

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import train_gpt as tg
from tests.helpers import TINY, randomize, tiny_hp
from tests.test_cuda_paths import fake_flash_varlen

pytestmark = pytest.mark.compile
CPU = torch.device("cpu")
SMALL = dict(NUM_LAYERS=3, MODEL_DIM=32, NUM_HEADS=2, NUM_KV_HEADS=1, ROPE_DIMS=4, LOOP_START=1, LOOP_END=1,  # all on
             NUM_LOOPS=1, PARALLEL_START_LAYER=2, XSA_LAST_N=3, GATE_WINDOW=8, COMPILE=2)  # fmt: skip


@pytest.fixture
def compile_on_cpu():
    torch._dynamo.reset()  # a fresh cache: every graph a test counts is one it compiled itself
    counters.clear()
    yield
    torch._dynamo.reset()


def graphs() -> int:
    """Graphs dynamo has compiled so far: the first compile and every recompile (a guard failure) count one."""
    return counters["stats"]["unique_graphs"]


def packed_batch(B=2, T=32, vocab=1024, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randint(2, vocab, (B, T), generator=gen), torch.randint(2, vocab, (B, T), generator=gen)
    x[0, [9, 20]] = tg.BOS_ID  # several documents per row
    x[1, 5] = tg.BOS_ID
    return x, y


def test_compiled_training_step_equals_eager_and_looping_compiles_once(compile_on_cpu):
    """Loss and every gradient of the compiled forward+backward equal eager's, looping off and on; switching the
    recurrence on compiles exactly one more graph, and switching it back compiles none."""
    hp = tiny_hp(**SMALL)
    eager = randomize(tg.GPT(hp))
    compiled_model = copy.deepcopy(eager)
    step_model = tg.maybe_compile(compiled_model, hp, CPU)
    assert step_model is not compiled_model, "maybe_compile must compile on CPU with COMPILE=2"
    x, y = packed_batch()
    for looping, expected_graphs in ((False, 1), (True, 2), (False, 2)):  # graphs so far: switching back reuses
        eager.looping = compiled_model.looping = looping
        losses = []
        for model in (eager, step_model):
            loss = model(x, y, tg.make_layout(x, "sdpa")).mean()
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], abs=1e-5), (looping, losses)
        for (name, pe), pc in zip(eager.named_parameters(), compiled_model.parameters()):
            assert pe.grad is not None or pc.grad is None, name
            if pe.grad is not None:
                assert torch.allclose(pe.grad, pc.grad, rtol=1e-4, atol=1e-6), (looping, name)
        eager.zero_grad(set_to_none=True)
        compiled_model.zero_grad(set_to_none=True)
        assert graphs() == expected_graphs, (looping, dict(counters["stats"]))


def test_compiled_training_recompiles_only_in_warmup(compile_on_cpu, monkeypatch, small_dataset):
    """The real compile_warmup and train() over the sample shards' document-packed batches, the flagship's geometry
    scaled down (2 micro-steps of 8 x 128 rows), with the flagship's three-length progressive schedule and the
    looping switch inside the timed run: warmup compiles one graph per (length, looping) pair the run meets, the
    timed run none; after each change of length the learning rate ramps up again over SEQ_LEN_WARMUP_STEPS. As on
    CUDA: bf16 autocast (CPU_BF16=1), and the FlashAttention varlen branch (the fake kernel), so cu_seqlens is an
    input of every compiled graph."""
    monkeypatch.setattr(tg, "_flash_varlen", fake_flash_varlen)
    # dynamo's capture and guards decide what compiles, not the backend: aot_eager traces forward and backward as
    # inductor's would, without its C++ builds (about 30 s a graph on 2 cores)
    monkeypatch.setattr(tg.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    backend = "fa3"
    hp = tiny_hp(**SMALL, DATA_PATH=small_dataset, CPU_BF16=1, TRAIN_SEQ_LEN=128,
                 SEQ_LEN_SCHEDULE="32@0.2,64@0.6,128@1.0",
                 TRAIN_BATCH_TOKENS=2048, GRAD_ACCUM_STEPS=2, WARMUP_STEPS=6, ITERATIONS=10, ENABLE_LOOPING_AT=0.6,
                 SEQ_LEN_WARMUP_STEPS=4, GPTQ=0)  # fmt: skip
    torch.manual_seed(0)
    model = tg.GPT(hp)
    step_model = tg.maybe_compile(model, hp, CPU)
    optimizers = tg.build_optimizers(model, hp, 0, 1, CPU)
    lines = []
    tg.compile_warmup(model, step_model, optimizers, hp, backend, 0, 1, 2, CPU, lines.append)
    # looping and 128 start together
    assert [shape[:2] for shape in tg.warmup_shapes(hp)] == [(32, False), (64, False), (128, True)]
    assert graphs() == 3, dict(counters["stats"])
    tg.train(hp, model, step_model, optimizers, backend, 0, 1, 2, CPU, lines.append)
    log = "\n".join(lines)
    assert "looping:on step:6" in log  # both switches were timed
    assert "seq_len_change: seq_len:64 step:2" in log and "seq_len_change: seq_len:128 step:6" in log
    lr_mul = {int(m[0]): float(m[1]) for m in re.findall(r"^step:(\d+)/\d+ .*?lr_mul:([\d.]+)", log, re.M)}
    warm = [tg.lr_multiplier(s / 10, hp.warmdown_frac, hp.min_lr) for s in range(10)]  # step s, before the ramp
    assert [lr_mul[s + 1] / warm[s] for s in (1, 2, 3, 5, 6, 7)] == pytest.approx(
        [1, 0.25, 0.5, 1, 0.25, 0.5], rel=2e-3
    )
    assert graphs() == 3, f"recompiled inside the timed run: {dict(counters['stats'])}"
    assert np.isfinite([float(v.split()[0]) for v in log.split("train_loss:")[1:]]).all()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_compiled_flex_eval_gives_the_eager_sdpa_nll(compile_on_cpu, small_dataset):
    """evaluate() through the compiled model with the GPU's kernel, flex attention and its document block mask
    (forward only: torch has no flex backward on CPU), against the eager model with SDPA and the explicit
    block-diagonal causal mask: the same NLL, sliding window (the score), on the first validation documents."""
    if tg.flex_attention is None:
        pytest.skip("this torch has no flex attention")
    hp = tiny_hp(**SMALL, DATA_PATH=small_dataset, VAL_BATCH_SIZE=2**20)  # one batch per pass: one shape
    full = tg.load_validation(hp, tg.load_tokenizer(str(small_dataset / "tokenizer.model"), hp.vocab_size))
    cut = int(np.flatnonzero(full.tokens == tg.BOS_ID)[3]) + 1  # three documents and the next BOS
    val = tg.ValData(full.tokens[:cut], full.target_bytes[:cut], full.byte_source)
    model = randomize(tg.GPT(hp), std=0.05)
    model.looping = True
    compiled = tg.maybe_compile(model, hp, CPU)
    with torch.no_grad():
        eager = tg.evaluate(model, val, hp, hp.eval_stride, "sdpa", CPU)
        flex = tg.evaluate(compiled, val, hp, hp.eval_stride, "flex", CPU)
        assert graphs() == 1
        again = tg.evaluate(compiled, val, hp, hp.eval_stride, "flex", CPU)
    assert graphs() == 1 and again == flex  # the second pass reuses the graph (the GPU run's steady rate)
    assert flex["tokens"] == eager["tokens"] == cut - 1 and flex["bytes"] == eager["bytes"]
    assert flex["val_loss"] == pytest.approx(eager["val_loss"], abs=1e-5)


def test_a_compiled_run_with_ttt_and_the_tilt_compiles_nothing_after_training(small_dataset, tmp_path, monkeypatch):
    """The real main() compiled (COMPILE=2), with TTT (two widths and a global SGD phase), the n-gram tilt and the
    diagnostics (the float model's pass, through the scorer's graph) on:
    every graph the evaluation runs is compiled before the training clock, so the eval clock counts 0. Dynamo's
    capture and guards decide what compiles, not the backend: inductor's C++ builds (about 90 s a graph on 2
    cores) are swapped for the eager backend, so the count is the one inductor would see. At SMALL's size: dynamo's
    tracing grows with the model, what compiles does not."""
    env = {**TINY, "DATA_PATH": str(small_dataset), "TOKENIZER_PATH": str(small_dataset / "tokenizer.model"),
           "LOG_DIR": str(tmp_path), "RUN_ID": "run", "COMPILE": "2", "TTT_ENABLED": "1", "TTT_CONTEXT": "256",
           "TTT_CHUNK": "128", "TTT_WIDTH_BUCKETS": "2", "TTT_PHASES": "1", "TTT_PHASE_DOCS": "3",
           "TTT_SGD_BATCH_TOKENS": "1024", "NGRAM_ORDER": "4", "ITERATIONS": "3", "EVAL_STRIDE": "0",
           "TTT_BATCH_DOCS": "4", "EVAL_DIAGNOSTICS": "1", **{k: str(v) for k, v in SMALL.items()}}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(tg.torch, "compile", functools.partial(torch.compile, backend="eager"))
    tg.main()
    log = (tmp_path / "run.txt").read_text()
    assert re.search(r"^eval_time_s:[\d.]+ eval_compiles:0 ", log, re.M), log[-1500:]
    assert re.search(r"^ttt_phase:1/1 docs:3 sgd_steps:\d+ ", log, re.M)  # global SGD ran, compiled beforehand
    assert len(re.findall(r"^ttt_warmup rows:", log, re.M)) == 3  # two widths and SGD, before the first step:
    assert log.index("ttt_warmup rows:") < log.index("step:1/3 ")
    assert re.search(r"^ttt_adapted_docs:8/8$", log, re.M) and re.search(r"^final_ttt_exact val_loss:", log, re.M)

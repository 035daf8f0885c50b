"""train_gpt.py on its real paths: data checks, exact BPB, document isolation, the CLI run and torchrun."""

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

import train_gpt as tg
from tests.conftest import shared_file
from tests.helpers import TINY, randomize, tiny_hp

ROOT = Path(__file__).resolve().parents[1]


def run_script(env: dict, dataset: Path, tmp_path: Path, nproc: int = 1, timeout: int = 300):
    env = {**os.environ, **TINY, "DATA_PATH": str(dataset), "TOKENIZER_PATH": str(dataset / "tokenizer.model"),
           "LOG_DIR": str(tmp_path), "RUN_ID": "run", **env}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "train_gpt.py")]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", cmd[1]]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def log_values(text: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf"{key}:([-\d.]+)", text)]


# ----------------------------------------------------------------------------- data checks


def test_shards_are_refused_with_the_reason(tmp_path, small_dataset):
    good = small_dataset / "fineweb_val_000000.bin"
    raw = good.read_bytes()
    cases = {
        "magic": b"\0\0\0\0" + raw[4:],
        "declares": raw[:-2],  # truncated by one token
        "VOCAB_SIZE=16": raw,
    }
    for expected, content in cases.items():
        bad = tmp_path / "fineweb_val_000000.bin"
        bad.write_bytes(content)
        with pytest.raises(tg.DataError, match=expected):
            tg.load_shard(str(bad), 16 if "VOCAB" in expected else 1024)


def test_tokenizer_and_sidecar_mismatches_are_refused(tmp_path, small_dataset, caseops_model):
    with pytest.raises(tg.DataError, match="VOCAB_SIZE=8192"):
        tg.load_tokenizer(str(small_dataset / "tokenizer.model"), 8192)
    with pytest.raises(tg.DataError, match="no such file"):
        tg.load_tokenizer(str(tmp_path / "missing.model"), 1024)
    # A CaseOps tokenizer must come with the byte sidecar, or BPB would charge the operators' bytes.
    (tmp_path / "fineweb_val_000000.bin").write_bytes((small_dataset / "fineweb_val_000000.bin").read_bytes())
    hp = tiny_hp(DATA_PATH=tmp_path, VOCAB_SIZE=8192)
    with pytest.raises(tg.DataError, match="no fineweb_val_bytes"):
        tg.load_validation(hp, tg.load_tokenizer(str(caseops_model), 8192))


def test_validation_bytes_are_the_original_utf8_bytes(sp1024_dataset, caseops_dataset, val_head_texts):
    """Both byte sources (tokenizer tables for sp1024, the sidecar for CaseOps) charge exactly the text."""
    expected = sum(len(t.encode("utf-8")) for t in val_head_texts)
    for dataset, vocab, source in [(sp1024_dataset, 1024, "tokenizer_tables"), (caseops_dataset, 8192, "sidecar")]:
        hp = tiny_hp(DATA_PATH=dataset, VOCAB_SIZE=vocab)
        val = tg.load_validation(hp, tg.load_tokenizer(str(dataset / "tokenizer.model"), vocab))
        assert val.byte_source == source
        assert int(val.target_bytes[1:].sum()) == expected == 313038


def test_target_bytes_match_the_data_pipeline_and_drop_the_space_after_bos(sp1024_dataset):
    """train_gpt.py carries its own byte tables (the counted code must be self-contained); they agree with
    data/tokenizer.py token by token, and a leading space right after BOS costs nothing."""
    from data import tokenizer as tok

    sp = tg.load_tokenizer(str(sp1024_dataset / "tokenizer.model"), 1024)
    tokens = tg.load_shard(str(sp1024_dataset / "fineweb_val_000000.bin")).astype(np.int64)
    ours = tg.target_bytes_from_tables(sp, tokens)
    assert np.array_equal(ours, tok.charged_bytes(tokens, tok.byte_tables(sp)))
    the = sp.piece_to_id("\u2581the")
    assert list(tg.target_bytes_from_tables(sp, np.array([tg.BOS_ID, the, the, tg.BOS_ID, the]))) == [0, 3, 4, 0, 3]


# ----------------------------------------------------------------------------- exact BPB


def first_docs(val: tg.ValData, n_docs: int) -> tg.ValData:
    """The first n documents plus the next document's BOS (their last target)."""
    end = np.flatnonzero(val.tokens == tg.BOS_ID)[n_docs] + 1
    return tg.ValData(val.tokens[:end], val.target_bytes[:end], val.byte_source)


def independent_bpb(model: tg.GPT, val: tg.ValData, sp: spm.SentencePieceProcessor) -> float:
    """Each document alone, full softmax in float64, bytes from the decoded text: nothing from the eval path."""
    bounds = list(np.flatnonzero(val.tokens[:-1] == tg.BOS_ID)) + [len(val.tokens) - 1]
    bits, nbytes = 0.0, 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        x = torch.tensor(val.tokens[a:b])[None]
        y = torch.tensor(val.tokens[a + 1 : b + 1])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model.logits(model.hidden(x, tg.make_layout(x, "sdpa"))).double(), -1)
        bits -= logp[0, torch.arange(y.size(1)), y[0]].sum().item() / math.log(2)
        nbytes += len(sp.decode(val.tokens[a + 1 : b].tolist()).encode("utf-8"))
    return bits / nbytes


@pytest.mark.parametrize("stride", [0, 48])
def test_reported_bpb_equals_an_independent_computation(sp1024_dataset, stride):
    hp = tiny_hp(DATA_PATH=sp1024_dataset, EVAL_SEQ_LEN=4096, VAL_BATCH_SIZE=8192)
    sp = tg.load_tokenizer(str(sp1024_dataset / "tokenizer.model"), 1024)
    val = first_docs(tg.load_validation(hp, sp), 4)
    assert len(val.tokens) - 1 <= 4096  # one window holds everything, so every context is the whole document
    torch.manual_seed(0)
    model = randomize(tg.GPT(hp))
    model.looping = True
    r = tg.evaluate(model, val, hp, stride, "sdpa", torch.device("cpu"))
    assert r["tokens"] == len(val.tokens) - 1  # every target once
    assert r["val_bpb"] == pytest.approx(independent_bpb(model, val, sp), rel=1e-6)


def test_sliding_window_scores_every_target_once_with_more_context(sp1024_dataset):
    hp = tiny_hp(DATA_PATH=sp1024_dataset, EVAL_SEQ_LEN=64, VAL_BATCH_SIZE=8192)
    val = first_docs(tg.load_validation(hp, tg.load_tokenizer(str(sp1024_dataset / "tokenizer.model"), 1024)), 6)
    for stride in (0, 16, 64):
        segs = tg.eval_segments(val.tokens, 64, stride)
        scored = np.concatenate([np.arange(s + f, s + n) for s, n, f in segs])
        assert np.array_equal(np.sort(scored), np.arange(len(val.tokens) - 1))
        assert all(n <= 64 for _, n, _ in segs)
        rows = tg.pack_rows(segs, 64)
        assert sorted(s for row in rows for s in row) == sorted(segs)
        assert all(sum(n for _, n, _ in row) <= 64 for row in rows)
    torch.manual_seed(0)
    model = randomize(tg.GPT(hp))
    chunked, sliding = (tg.evaluate(model, val, hp, s, "sdpa", torch.device("cpu")) for s in (0, 16))
    assert chunked["tokens"] == sliding["tokens"] and chunked["bytes"] == sliding["bytes"]
    assert sliding["val_bpb"] != chunked["val_bpb"]


# ----------------------------------------------------------------------------- document isolation


def test_changing_a_document_never_changes_the_next_documents_losses():
    hp = tiny_hp(VOCAB_SIZE=64)
    torch.manual_seed(0)
    model = randomize(tg.GPT(hp))
    model.looping = True
    g = torch.Generator().manual_seed(1)
    x = torch.randint(2, 64, (2, 96), generator=g)
    x[:, [0, 30, 61]] = tg.BOS_ID  # three documents per row: [0,30), [30,61), [61,96)
    y = torch.randint(2, 64, (2, 96), generator=g)
    base = model(x, y, tg.make_layout(x, "sdpa"))
    x2 = x.clone()
    x2[:, 31:61] = torch.randint(2, 64, (2, 30), generator=g)  # document 1 rewritten, its BOS kept
    out = model(x2, y, tg.make_layout(x2, "sdpa"))
    assert torch.equal(out[:, 61:], base[:, 61:])  # document 2 does not see document 1 at all
    assert torch.equal(out[:, :31], base[:, :31])  # nor does anything before the change (causal)
    assert not torch.allclose(out[:, 31:61], base[:, 31:61])


# ----------------------------------------------------------------------------- the script itself


def test_cli_run_logs_source_hparams_and_final_lines(small_dataset, tmp_path):
    """A wallclock-capped run: stops before the cap minus the reserve, loops from 35%, logs what it must."""
    p = run_script({"ITERATIONS": "100000", "MAX_WALLCLOCK_SECONDS": "4", "GPTQ_RESERVE_SECONDS": "1",
                    "EVAL_DIAGNOSTICS": "1"}, small_dataset, tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    log = (tmp_path / "run.txt").read_text()
    assert log.startswith((ROOT / "train_gpt.py").read_text())  # the source that ran
    assert "hparam NUM_LAYERS=6" in log and "hparam MATRIX_LR=0.028" in log
    reserve_s = float(re.search(r"^artifact_reserve_s:([\d.]+) calibration_s:1.00 export_s:", log, re.M).group(1))
    budget_ms = 1000 * (4 - reserve_s)  # the cap less calibration and the predicted export
    stop = re.search(r"stopping_early:wallclock_cap train_time_ms:(\d+)", log)
    assert stop and int(stop.group(1)) <= budget_ms
    calibration_end = float(re.search(r"gptq_calibration_end_s:([\d.]+)", log).group(1))
    made_s = float(re.search(r"^artifact_production_s:([\d.]+) predicted_s:", log, re.M).group(1))
    assert int(stop.group(1)) / 1000 < calibration_end < made_s <= 4.0  # training data, then the artifact: by the cap
    looping_ms = int(re.search(r"looping:on step:\d+ train_time_ms:(\d+)", log).group(1))
    assert 0.35 * budget_ms <= looping_ms < 0.35 * budget_ms + 500
    tail = log.strip().splitlines()[-6:]
    assert tail[0].startswith("final_prequant_exact") and tail[1].startswith("final_roundtrip_exact")
    assert re.fullmatch(r"final_roundtrip_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}", tail[1])
    assert re.fullmatch(
        r"eval_time_s:[\d.]+ eval_compiles:0 ngram_hints:[\d.]+ prequant_eval:[\d.]+ load:[\d.]+ roundtrip_eval:[\d.]+",
        tail[5],
    )
    assert tail[4] == "eval_world_size:1"
    # progress a reader can follow: the cap left and the projected last step; each evaluation part as it starts
    steps = re.findall(r"^step:(\d+)/\d+ train_loss:.* remaining_s:(\d+) projected_steps:(\d+)$", log, re.M)
    assert steps and all(0 <= int(left) <= 3 for _, left, _ in steps)
    assert int(steps[-1][2]) >= int(steps[-1][0])
    parts = re.findall(r"^eval_part:(\w+) elapsed_s:[\d.]+$", log, re.M)
    assert parts == ["ngram_hints", "prequant_eval", "load", "roundtrip_eval"]
    pre, post = log_values(tail[0], "val_bpb")[0], log_values(tail[1], "val_bpb")[0]
    assert abs(pre - post) < 0.05  # GPTQ int6/int7 costs little
    artifact, code = log_values(tail[2], "artifact_bytes")[0], log_values(tail[2], "code_bytes")[0]
    model_bytes = (tmp_path / "run.ptz").stat().st_size
    assert code == (ROOT / "train_gpt.py").stat().st_size and artifact == code + model_bytes
    assert tail[3].startswith("step_avg_ms:") and not list(tmp_path.glob("*.tmp"))


def test_warmup_compiles_only_the_shapes_the_run_meets():
    """Each (length, looping) pair is a compile of about 70 s on a GPU: the flagship's run meets 4 of its 6."""
    shapes = lambda hp: [(length, looping) for length, looping, _ in tg.warmup_shapes(hp)]  # and each one's share
    flagship = tg.Hyperparameters({})
    assert shapes(flagship) == [(1024, False), (2048, False), (2048, True), (3072, True)]
    assert shapes(tg.Hyperparameters({"NUM_LOOPS": "0"})) == [(1024, False), (2048, False), (3072, False)]
    early = tg.Hyperparameters({"ENABLE_LOOPING_AT": "0.05"})
    assert shapes(early) == [(1024, False), (1024, True), (2048, True), (3072, True)]
    assert shapes(tg.Hyperparameters({"ENABLE_LOOPING_AT": "0"}))[0] == (1024, True)


def test_compile_warmup_is_undone(small_dataset, tmp_path, tiny_run):
    """Warmup steps train (looped and not), then weights, optimizer state and data order are restored: the run
    with 4 warmup steps trains and scores as tiny_run (the same configuration, none)."""
    p = run_script({"WARMUP_STEPS": "4", "EVAL_STRIDE": "0", "ITERATIONS": "3"}, small_dataset, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = {"0": (tiny_run / "run.txt").read_text(), "4": (tmp_path / "run.txt").read_text()}
    assert "hparam WARMUP_STEPS=0" in runs["0"] and "hparam ITERATIONS=3" in runs["0"]
    assert "warmup_step:4/4" in runs["4"]
    for log in runs.values():  # the default evaluation computes only the score: one pass, in the configured mode
        assert not re.search(r"^(final_prequant_exact|prequant_eval)", log, re.M)
        assert re.findall(r"^roundtrip_eval mode:(\w+)", log, re.M) == ["chunked"]
    assert log_values(runs["0"], "train_loss") == log_values(runs["4"], "train_loss")
    assert log_values(runs["0"], "final_roundtrip_exact val_loss") == log_values(
        runs["4"], "final_roundtrip_exact val_loss"
    )


def test_cli_refuses_a_bad_env_var_with_its_name(small_dataset, tmp_path):
    p = run_script({"NUM_LAYERS": "eleven"}, small_dataset, tmp_path)
    assert p.returncode == 2 and "NUM_LAYERS='eleven'" in p.stderr and "expected int" in p.stderr
    p = run_script({"TRAIN_BATCH_TOKENS": "500"}, small_dataset, tmp_path)
    assert p.returncode == 2 and "TRAIN_BATCH_TOKENS=500" in p.stderr


def test_two_process_torchrun_matches_one_process_with_accumulation(small_dataset, tmp_path):
    """Same global batch: 2 gloo ranks x 1 micro-step == 1 process x 2 micro-steps, up to float reduction order
    (unclipped: each rank clips its own gradient, as R1611; test_components tests the clip's place)."""
    common = {
        "ITERATIONS": "4",
        "EVAL_STRIDE": "0",
        "TRAIN_BATCH_TOKENS": "1024",
        "EVAL_DIAGNOSTICS": "1",
        "GRAD_CLIP_NORM": "0",
    }
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = run_script({**common, "GRAD_ACCUM_STEPS": "2"}, small_dataset, tmp_path / "one")
    two = run_script({**common, "GRAD_ACCUM_STEPS": "1"}, small_dataset, tmp_path / "two", nproc=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    log1, log2 = ((tmp_path / d / "run.txt").read_text() for d in ("one", "two"))
    assert "world_size:2" in log2 and "grad_accum_steps:2" in log1
    loss1, loss2 = log_values(log1, "train_loss"), log_values(log2, "train_loss")
    assert len(loss1) == len(loss2) == 4
    assert np.allclose(loss1, loss2, rtol=0, atol=1e-5), (loss1, loss2)
    norm1, norm2 = log_values(log1, "grad_norm"), log_values(log2, "grad_norm")  # gradients averaged, not summed
    assert np.allclose(norm1, norm2, rtol=1e-4), (norm1, norm2)
    val1 = log_values(log1.split("final_prequant_exact")[1], "val_loss")[0]
    val2 = log_values(log2.split("final_prequant_exact")[1], "val_loss")[0]
    assert val1 == pytest.approx(val2, abs=1e-5)


# ----------------------------------------------------------------------------- bad input and interrupts


def tiny_artifact(path: Path, **over) -> Path:
    """An artifact of the toy configuration (random weights, round to nearest), without a training run."""
    hp = tiny_hp(**over)
    torch.manual_seed(0)
    packed = tg.quantize_model(tg.GPT(hp).state_dict(), None, hp, log=lambda _: None)
    path.write_bytes(tg.serialize(packed, "zlib", tg.artifact_run(hp))[0])
    return path


def test_bad_inputs_end_in_one_error_line_without_a_traceback(small_dataset, tmp_path, monkeypatch, capsys):
    """Each case: exit 2, one `error:` line naming what was wrong, no traceback; once the log exists, it says so.
    In this process, through entry() as the command line runs it (a subprocess each cost 2 s of imports); the
    command line's own exit code is test_cli_refuses_a_bad_env_var_with_its_name's."""
    not_model = tmp_path / "not_a.model"
    not_model.write_bytes(b"this is not a sentencepiece model")
    empty_val = tmp_path / "empty_val"
    empty_val.mkdir()
    for f in small_dataset.iterdir():
        (empty_val / f.name).symlink_to(f)
    (empty_val / "fineweb_val_000000.bin").unlink()
    header = np.zeros(tg.HEADER_INTS, "<i4")
    header[:3] = tg.SHARD_MAGIC, tg.SHARD_VERSION, 0
    (empty_val / "fineweb_val_000000.bin").write_bytes(header.tobytes())
    (tmp_path / "a_file").write_text("")
    (tmp_path / "taken.txt").write_text("an earlier run's log\n")
    artifact = lambda name, **hp: str(tiny_artifact(tmp_path / f"{name}.ptz", **hp))
    sp8192 = {"TOKENIZER_PATH": str(shared_file("fineweb_8192_bpe.model")), "VOCAB_SIZE": "8192"}
    cases = {
        "missing_artifact": ({"EVAL_ONLY": str(tmp_path / "missing.ptz")}, "EVAL_ONLY=", "no such file"),
        "other_shape": ({"EVAL_ONLY": artifact("w96", MODEL_DIM=96)}, "MODEL_DIM=64 (artifact: 96)"),
        "tokenizer_not_of_the_shards": (sp8192, "did not make the shards", "fineweb_1024_bpe.model"),
        "taken": ({}, "RUN_ID=taken: taken.txt already in LOG_DIR="),
        "not_a_tokenizer": ({"TOKENIZER_PATH": str(not_model)}, "TOKENIZER_PATH=", "not a SentencePiece model"),
        "empty_val_shard": ({"DATA_PATH": str(empty_val)}, "fineweb_val_000000.bin", "found no tokens at all"),
        "log_dir_under_a_file": ({"LOG_DIR": str(tmp_path / "a_file" / "logs")}, "LOG_DIR=", "cannot write"),
    }  # fmt: skip
    base = {**TINY, "DATA_PATH": str(small_dataset), "TOKENIZER_PATH": str(small_dataset / "tokenizer.model"),
            "LOG_DIR": str(tmp_path)}  # fmt: skip
    sigterm = signal.getsignal(signal.SIGTERM)
    for name, (env, *parts) in cases.items():
        with monkeypatch.context() as m:
            for k, v in {**base, "RUN_ID": name, **env}.items():
                m.setenv(k, v)
            with pytest.raises(SystemExit) as exit_:
                tg.entry()  # anything but the run's own errors escapes as itself: a traceback, failing here
            signal.signal(signal.SIGTERM, sigterm)  # entry() makes SIGTERM a Ctrl-C, for the whole process
        stderr = capsys.readouterr().err
        lines = stderr.strip().splitlines()
        assert exit_.value.code == 2 and "Traceback" not in stderr, (name, stderr[-2000:])
        assert lines[-1].startswith("error: ") and all(part in lines[-1] for part in parts), (name, lines[-1])
        log = tmp_path / f"{name}.txt"
        if log.is_file() and name not in ("missing_artifact", "taken"):  # refused before the log: nothing written
            assert log.read_text().strip().splitlines()[-1] == lines[-1], name


def test_eval_only_refuses_a_setting_that_differs_from_the_artifacts_and_lengths_past_the_validation_set(
    tmp_path, small_dataset
):
    """In process, the checks run() makes (the CLI path is the other_shape case above): another activation, XSA
    depth or softcap than the artifact's, an artifact that records none, a window longer than all validation."""
    no_record = tmp_path / "no_record.ptz"
    no_record.write_bytes(tg.serialize(tg.deserialize(tiny_artifact(tmp_path / "w.ptz").read_bytes()), "zlib")[0])
    cases = [({"MLP_ACT": "relu2"}, {"MLP_ACT": "leaky_relu2"}, ["MLP_ACT=leaky_relu2 (artifact: relu2)"]),
             ({"XSA_LAST_N": 2, "LOGIT_SOFTCAP": 20}, {"LOGIT_SOFTCAP": "30"},
              ["XSA_LAST_N=6 (artifact: 2)", "LOGIT_SOFTCAP=30.0 (artifact: 20.0)"]),
             (None, {}, ["records hyperparameters []", "MODEL_DIM"])]  # fmt: skip
    for trained, env, parts in cases:
        path = no_record if trained is None else tiny_artifact(tmp_path / "a.ptz", **trained)
        hp = tiny_hp(EVAL_ONLY=path, **env)
        with pytest.raises((tg.HyperparameterError, tg.ArtifactError)) as info:
            tg.adopt_artifact(hp, path.read_bytes())
        assert all(part in str(info.value) for part in parts), str(info.value)
    hp = tiny_hp(DATA_PATH=small_dataset, EVAL_SEQ_LEN=65536)
    with pytest.raises(tg.HyperparameterError, match=r"EVAL_SEQ_LEN: length 65536 is longer than all 1\d+ valid"):
        tg.check_lengths_fit(hp, 10_000)


def test_eval_only_takes_the_model_shape_from_the_artifact(tmp_path):
    """An artifact of another activation, XSA depth and softcap, scored under defaults that differ: the header's
    values replace them, and the rebuilt model is the exported one (same logits), not a reshaped guess."""
    trained = tiny_hp(MLP_ACT="relu2", XSA_LAST_N=2, LOGIT_SOFTCAP=20, MODEL_DIM=96)
    blob = tiny_artifact(tmp_path / "a.ptz", MLP_ACT="relu2", XSA_LAST_N=2, LOGIT_SOFTCAP=20, MODEL_DIM=96).read_bytes()
    hp = tg.Hyperparameters({k: v for k, v in TINY.items() if k != "MODEL_DIM"} | {"XSA_LAST_N": "2"})
    assert (hp.mlp_act, hp.model_dim, hp.logit_softcap) == ("leaky_relu2", 512, 30.0)
    hp.eval_only = str(tmp_path / "a.ptz")
    tg.adopt_artifact(hp, blob)
    assert all(getattr(hp, n.lower()) == getattr(trained, n.lower()) for n in tg.MODEL_HPARAMS)
    model, reference = tg.GPT(hp), tg.GPT(trained)
    weights = tg.dequantize_model(tg.deserialize(blob))
    model.load_state_dict(weights)
    reference.load_state_dict(weights)
    x = torch.randint(2, 1024, (1, 32))
    layout = tg.make_layout(x, "sdpa")
    assert torch.equal(model(x, x, layout), reference(x, x, layout))


def test_an_evaluation_that_misses_a_target_is_an_error_not_a_score(small_dataset, monkeypatch):
    """C4 at run time: the evaluation's line states scored and expected targets and bytes; one window fewer (a
    target unscored) raises EvalError naming both counts instead of returning the partial BPB."""
    hp = tiny_hp(DATA_PATH=small_dataset, TOKENIZER_PATH=small_dataset / "tokenizer.model", EVAL_STRIDE=0)
    val = tg.load_validation(hp, tg.load_tokenizer(hp.tokenizer_path, hp.vocab_size))
    model, lines, cpu = tg.GPT(hp).eval(), [], torch.device("cpu")
    tg.evaluate_pass(model, val, hp, "sdpa", 0, 1, cpu, lines.append, "roundtrip")
    n, b = len(val.tokens) - 1, int(val.target_bytes[1:].sum())
    assert f"tokens:{n} expected_tokens:{n} bytes:{b} expected_bytes:{b} " in lines[0]
    segments = tg.eval_segments
    monkeypatch.setattr(tg, "eval_segments", lambda *a: segments(*a)[:-1])
    with pytest.raises(tg.EvalError, match=rf"roundtrip_eval scored (?!{n} )\d+ targets .* has {n} and {b}"):
        tg.evaluate_pass(model, val, hp, "sdpa", 0, 1, cpu, lines.append, "roundtrip")


def test_an_interrupt_ends_the_run_with_what_it_saved_and_says_so(small_dataset, tmp_path):
    """SIGINT (and SIGTERM, the same handler) during training: exit 130, no traceback, the log's last line."""
    import signal
    import time

    data = {"DATA_PATH": str(small_dataset), "TOKENIZER_PATH": str(small_dataset / "tokenizer.model")}
    env = {**os.environ, **TINY, **data, "LOG_DIR": str(tmp_path), "RUN_ID": "stop", "ITERATIONS": "100000",
           "MAX_WALLCLOCK_SECONDS": "600"}  # fmt: skip
    log = tmp_path / "stop.txt"
    for sig in (signal.SIGINT, signal.SIGTERM):
        log.unlink(missing_ok=True)
        p = subprocess.Popen([sys.executable, str(ROOT / "train_gpt.py")], env=env, cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.time() + 120
        while not (log.is_file() and "step:5/" in log.read_text(errors="ignore")) and time.time() < deadline:
            time.sleep(0.5)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
        last = log.read_text().strip().splitlines()[-1]
        assert last.startswith("error: interrupted; kept: ") and "stop.txt" in last


def test_a_damaged_later_train_shard_is_refused_at_start(small_dataset, tmp_path):
    """Every train shard's header and size is checked when the stream opens, not when training reaches it."""
    data = tmp_path / "data"
    data.mkdir()
    for f in small_dataset.iterdir():
        (data / f.name).symlink_to(f)
    raw = (small_dataset / "fineweb_train_000000.bin").read_bytes()
    (data / "fineweb_train_000001.bin").write_bytes(raw[: len(raw) // 2])  # a later shard, truncated
    with pytest.raises(tg.DataError, match="fineweb_train_000001.bin: header declares"):
        tg.TrainLoader(tiny_hp(DATA_PATH=data), 0, 1, 1)


def test_a_non_finite_loss_stops_training_at_once_and_keeps_the_ema_weights(small_dataset, tmp_path):
    hp = tiny_hp(DATA_PATH=small_dataset, LOG_DIR=tmp_path, RUN_ID="nan", ITERATIONS=50, GPTQ=0)
    torch.manual_seed(0)
    model = tg.GPT(hp)
    optimizers = tg.build_optimizers(model, hp, 0, 1, torch.device("cpu"))
    calls, lines = [], []

    def poisoned(x, y, layout):  # the model's forward, turned to NaN from the third step on
        calls.append(1)
        nll = model(x, y, layout)
        return nll * float("nan") if len(calls) >= 3 else nll

    with pytest.raises(tg.TrainingError, match=r"step 3: training loss is nan; stopped, the EMA weights before it"):
        tg.train(hp, model, poisoned, optimizers, "sdpa", 0, 1, 1, torch.device("cpu"), lines.append)
    assert len(calls) == 3 and not any("step:4/" in line for line in lines)
    kept = torch.load(tmp_path / "nan.float.pt")["state"]
    assert set(kept) == set(model.state_dict()) and all(torch.isfinite(t).all() for t in kept.values())


def test_an_update_that_leaves_nan_weights_stops_before_the_ema_takes_them(small_dataset, tmp_path):
    """ADAM_EPS=0 turns a zero gradient into 0/0: NaN weights behind a finite loss. The run stops at that step,
    and the kept EMA weights are all finite."""
    hp = tiny_hp(DATA_PATH=small_dataset, LOG_DIR=tmp_path, RUN_ID="nanw", ITERATIONS=50, GPTQ=0, ADAM_EPS=0)
    torch.manual_seed(0)
    model, lines = tg.GPT(hp), []
    optimizers = tg.build_optimizers(model, hp, 0, 1, torch.device("cpu"))
    with pytest.raises(tg.TrainingError, match=r"step 1: its update left non-finite weights; stopped, the EMA"):
        tg.train(hp, model, model, optimizers, "sdpa", 0, 1, 1, torch.device("cpu"), lines.append)
    kept = torch.load(tmp_path / "nanw.float.pt")["state"]
    assert all(torch.isfinite(t).all() for t in kept.values())

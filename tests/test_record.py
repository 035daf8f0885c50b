"""tools/record.py: log parsing on real runs, the significance test, the reviewer's checks, refusals."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import TINY
from tools import record

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_logs(small_dataset, tmp_path_factory):
    """Two short real runs of train_gpt.py (seeds 1 and 2), TTT on, a validation every 2 steps."""
    out = tmp_path_factory.mktemp("runs")
    data = {"DATA_PATH": str(small_dataset), "TOKENIZER_PATH": str(small_dataset / "tokenizer.model")}
    ttt = {
        "TTT_ENABLED": "1",
        "TTT_CHUNK": "512",
        "TTT_CONTEXT": "512",
        "TTT_BATCH_DOCS": "8",
        "EVAL_DIAGNOSTICS": "1",
        "TTT_SGD_BATCH_TOKENS": "4096",  # 8 rows a global SGD step: the default's 128 took 30 s of warmup a run
        "TTT_SHORT_CHUNKS": "",  # TTT_CHUNK for every document: the default's 24-token chunks were most of a run
    }  # every stage, for the plots and tables
    env = {**os.environ, **TINY, **data, **ttt, "LOG_DIR": str(out), "EVAL_STRIDE": "0", "ITERATIONS": "4"}
    logs = []
    for seed in (1, 2):
        p = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], env={**env, "SEED": str(seed),
                           "RUN_ID": f"seed{seed}"}, cwd=out, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert p.returncode == 0, p.stderr[-2000:]
        logs.append(out / f"seed{seed}.txt")
    return logs


def build_args(tmp_path, **over):
    args = dict(name="tiny", author="t", github_id="t", track="non_record_test", hardware=None, date="2026-11-24",
                reference=None, notes=None, expect_val=None, allow_failed_checks=False, overwrite=False,
                allow_unverified_val=False, allow_other_val=False)  # fmt: skip
    return SimpleNamespace(**{**args, **over})


def test_parse_log_reads_every_stable_line_of_a_real_run(real_logs):
    text = real_logs[0].read_text()
    r = record.parse_log(real_logs[0])
    assert r.source == (ROOT / "train_gpt.py").read_bytes() and r.code_bytes == len(r.source)
    assert r.seed == 1 and r.hparams["ITERATIONS"] == "4" and r.steps == 4
    assert set(r.stages) == {"prequant", "roundtrip", "ttt"} and r.score == r.stages["ttt"]
    ttt = re.search(r"^final_ttt_exact val_loss:([\d.]+) val_bpb:([\d.]+)$", text, re.M)
    assert r.score == {"val_loss": float(ttt.group(1)), "val_bpb": float(ttt.group(2))}
    assert r.artifact_bytes == r.code_bytes + r.model_bytes
    assert [s for s, *_ in r.curve] == [1, 2, 3, 4] and r.val_curve == []  # no validation during training
    assert r.curve[-1][3] == r.train_tokens and r.val_docs == 8 and r.val_tokens > 0
    assert (r.val_check, r.val_set) == ("ok", "other")  # the sample's manifest checked; not the challenge's set
    assert r.eval_s >= sum(r.eval_parts.values()) - 0.05 and {"load", "roundtrip_eval", "ttt_eval"} <= set(r.eval_parts)
    assert r.train_with_calibration_s >= r.train_s and r.device == "cpu" and r.world_size == r.eval_world_size == 1
    made = float(re.search(r"^artifact_production_s:([\d.]+)", text, re.M).group(1))
    assert r.artifact_production_s == made > r.train_with_calibration_s and not r.train_violation


def test_a_log_that_did_not_finish_is_refused_with_the_reason(real_logs, tmp_path):
    cut = tmp_path / "cut.txt"
    cut.write_text(real_logs[0].read_text().split("final_prequant_exact")[0])
    with pytest.raises(record.RecordError, match="artifact_bytes"):
        record.parse_log(cut)


def test_build_writes_a_complete_record(real_logs, tmp_path):
    runs = [record.parse_log(p) for p in real_logs]
    worse = [r.score["val_bpb"] + 0.5 + d for r in runs for d in (0.0, 0.01)][:3]
    fp = (runs[0].val_docs, runs[0].val_tokens)
    args = build_args(tmp_path, reference=[str(v) for v in worse], expect_val=fp, allow_other_val=True)
    folder = record.build_record(real_logs, tmp_path, args)
    assert folder == tmp_path / "non_record_test" / "2026-11-24_tiny"
    assert (folder / "train_gpt.py").read_bytes() == (ROOT / "train_gpt.py").read_bytes()
    assert (folder / "requirements.txt").read_text() == (ROOT / "requirements.txt").read_text()
    assert sorted(p.name for p in (folder / "logs").iterdir()) == ["train_seed1.txt", "train_seed2.txt"]
    for png in ("training_curves.png", "stages.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["val_bpb"] == pytest.approx(np.mean([r.score["val_bpb"] for r in runs]))
    assert sub["val_bpb_std"] == pytest.approx(np.std([r.score["val_bpb"] for r in runs], ddof=1))
    assert set(sub["seeds"]) == {"1", "2"} and sub["artifact_bytes"] == max(r.artifact_bytes for r in runs)
    assert sub["val_fingerprint"] == {"val_docs": 8, "val_tokens": fp[1], "val_check": "ok", "val_set": "other"}
    assert all(sub["checks"].values()) and sub["significance"]["passes"] and sub["improvement_bpb"] > 0.5
    readme = (folder / "README.md").read_text()
    assert "| 1 | 4 |" in readme and "| 2 | 4 |" in readme and "meets the bar" in readme
    assert "| `MODEL_DIM` | 64 | 512 |" in readme  # configuration against the flagship defaults
    command = r"^DATA_PATH=\S+ .*VOCAB_SIZE=1024 .*MODEL_DIM=64 .* SEED=<seed> python3 records/\S+/train_gpt.py$"
    assert re.search(command, readme, re.M)


def test_an_artifact_over_budget_is_refused_and_nothing_is_written(real_logs, tmp_path):
    big = tmp_path / "big.txt"
    text = real_logs[1].read_text()
    big.write_text(re.sub(r"^artifact_bytes:\d+", "artifact_bytes:16000001", text, flags=re.M))
    out = tmp_path / "records"
    with pytest.raises(record.RecordError, match="16,000,000-byte budget: seed 2 16,000,001"):
        record.build_record([real_logs[0], big], out, build_args(tmp_path))
    assert not out.exists() or not any(out.rglob("*"))
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "record.py"), "build", str(real_logs[0]), str(big),
                        "--name", "x", "--records", str(out)], capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and "error: artifact over the 16,000,000-byte budget" in p.stderr
    assert not out.exists() or not any(out.rglob("*"))


def test_logs_of_unverified_or_other_validation_data_are_refused_unless_told(real_logs, tmp_path):
    """val_set:other (the sample) is refused without --allow-other-val; val_check:unverified (no manifest), and a
    log from before the check (no val_check on its line), without --allow-unverified-val; on the command line too."""
    unverified, older = tmp_path / "unverified.txt", tmp_path / "older.txt"
    text = real_logs[1].read_text()
    unverified.write_text(text.replace(" val_check:ok ", " val_check:unverified ", 1))
    older.write_text(re.sub(r" tokenizer_check:\S+ val_check:ok val_set:other$", "", text, count=1, flags=re.M))
    cli = lambda *a: subprocess.run([sys.executable, str(ROOT / "tools" / "record.py"), "build", *map(str, a),
                                     "--name", "v", "--records", str(tmp_path / "r"), "--overwrite"],
                                    capture_output=True, text=True)  # fmt: skip
    p = cli(*real_logs)
    other = r"error: not the challenge's validation set \(val_set not official; 8 documents, [\d,]+ tokens\) in "
    assert p.returncode == 2 and re.match(other + r"seed1\.txt, seed2\.txt: --allow-other-val", p.stderr), p.stderr
    assert not (tmp_path / "r").exists()
    for log in (unverified, older):
        p = cli(real_logs[0], log, "--allow-other-val")
        refused = f"error: validation data not checked against its manifest.json (val_check not ok) in {log.name}: "
        assert p.returncode == 2 and p.stderr.startswith(refused), p.stderr
        assert cli(real_logs[0], log, "--allow-other-val", "--allow-unverified-val").returncode == 0
    assert record.parse_log(older).val_check == "unverified" and record.parse_log(older).val_set == "unknown"


def test_code_that_differs_from_what_ran_is_caught(real_logs, tmp_path):
    other = tmp_path / "other.txt"
    raw = real_logs[1].read_bytes()
    other.write_bytes(raw.replace(b"Parameter Golf", b"Parameter golf", 1))  # same size, different code
    with pytest.raises(record.RecordError, match="different code"):
        record.build_record([real_logs[0], other], tmp_path, build_args(tmp_path))
    runs = [record.parse_log(p) for p in real_logs]
    checks = dict((n, ok) for n, ok, _ in record.run_checks(runs, runs[0].source + b"\n", None))
    assert not checks["code size equals the train_gpt.py in the folder"]
    checks = dict((n, ok) for n, ok, _ in record.run_checks(runs, runs[0].source, (50000, 47851520)))
    assert not checks["validation fingerprint (val_docs, val_tokens)"]  # the sample is not the official split
    runs[1].eval_world_size = 2  # TTT with a warm A scores differently on 2 ranks: not the same record
    checks = dict((n, ok) for n, ok, _ in record.run_checks(runs, runs[0].source, None))
    assert not checks["scored at one world size"]


def test_logs_of_different_configurations_are_refused_naming_each_difference(real_logs, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(real_logs[0].read_text())
    text = real_logs[1].read_text()  # same code, seed 2: only the hparam lines change
    for name, value in [("MODEL_DIM", "96"), ("EVAL_STRIDE", "64")]:
        text, n = re.subn(rf"^hparam {name}=.*$", f"hparam {name}={value}", text, flags=re.M)
        assert n == 1
    b.write_text(text)
    out = tmp_path / "records"
    msg = (
        "logs differ in MODEL_DIM (64 in a.txt, 96 in b.txt), EVAL_STRIDE (0 in a.txt, 64 in b.txt): "
        "a record's seeds must share one configuration"
    )
    with pytest.raises(record.RecordError) as e:
        record.build_record([a, b], out, build_args(tmp_path, allow_failed_checks=True))
    assert str(e.value) == msg and not out.exists()
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "record.py"), "build", str(a), str(b), "--name", "x",
                        "--records", str(out)], capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and p.stderr == f"error: {msg}\n"


def test_welch_t_test_matches_the_t_table():
    """Equal sizes and variances: Welch is Student's t with 2n-2 = 4 degrees of freedom, whose one-sided 1%
    critical value is 3.747 (t tables); a difference that gives t = 3.747 must give p = 0.01."""
    ours = [1.0, 2.0, 3.0]  # mean 2, variance 1
    d = 3.747 * np.sqrt(1 / 3 + 1 / 3)
    ref = [x + d + record.MARGIN_NATS for x in ours]
    sig = record.significance(ours, ref)
    assert sig["test"] == "welch" and sig["t"] == pytest.approx(3.747, rel=1e-6)
    assert sig["p_value"] == pytest.approx(0.01, abs=2e-5) and sig["improvement_nats"] == pytest.approx(d + 0.005)
    one = record.significance(ours, [2.0 + 0.005 + 6.965 / np.sqrt(3)])  # one sample, df 2: t(0.99) = 6.965
    assert one["test"] == "one_sample" and one["p_value"] == pytest.approx(0.01, abs=2e-5)


def test_the_verdict_needs_both_the_margin_and_the_p_value():
    ours = [2.0000, 2.0001, 2.0002]
    assert record.significance(ours, [2.0101, 2.0100, 2.0102])["passes"]  # 0.01 nats better, tight
    assert not record.significance(ours, [2.0041, 2.0040, 2.0042])["passes"]  # significant, but < 0.005 nats
    assert not record.significance(ours, [2.05, 1.99, 2.03])["passes"]  # 0.022 better on average, too noisy


@pytest.mark.parametrize("folder", sorted(p.parent for p in (ROOT / "records").glob("*/*/submission.json")), ids=str)
def test_every_committed_record_agrees_with_its_logs(folder):
    """What a reviewer re-derives: the scores, sizes and checks in submission.json come from the logs in the
    folder, and the train_gpt.py there is byte for byte the code every log ran."""
    sub = json.loads((folder / "submission.json").read_text())
    runs = [record.parse_log(p) for p in sorted((folder / "logs").glob("*.txt"))]
    code = (folder / "train_gpt.py").read_bytes()
    assert sorted(sub["seeds"]) == sorted(str(r.seed) for r in runs) and len(runs) >= 3
    assert sub["val_bpb"] == pytest.approx(np.mean([r.score["val_bpb"] for r in runs]), abs=1e-9)
    assert sub["code_bytes"] == len(code) and sub["artifact_bytes"] == max(r.artifact_bytes for r in runs)
    fingerprint = (sub["val_fingerprint"]["val_docs"], sub["val_fingerprint"]["val_tokens"])
    checks = record.run_checks(runs, code, fingerprint)
    assert all(ok for _, ok, _ in checks)  # a check added since the record was made must pass on its logs too
    assert sub["checks"] == {name: ok for name, ok, _ in checks if name in sub["checks"]}


def test_a_repeated_seed_is_refused_before_any_run(tmp_path):
    with pytest.raises(record.RecordError, match=r"^--seeds 1 2 1: give each seed once"):
        record.run_seeds([1, 2, 1], 1, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing packed, nothing run


def test_a_failed_bench_run_names_the_run_and_the_script_error(tmp_path):
    env = {**os.environ, "VOCAB_SIZE": "many", "RUN_ID": "bad_run", "LOG_DIR": str(tmp_path)}
    with pytest.raises(record.RecordError, match=r"(?s)bad_run exited with 2:.*VOCAB_SIZE='many': expected int"):
        record.run_train_gpt(env)

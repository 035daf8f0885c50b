"""The prepared GPU check runs end to end on CPU (so it cannot rot before a GPU reaches it), and its 8-GPU
projection counts what the evaluation really computes."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
import report  # noqa: E402

import train_gpt as tg  # noqa: E402


@pytest.mark.filterwarnings("ignore")
def test_every_stage_runs_at_a_tiny_size_and_is_saved(caseops_dataset, tmp_path):
    argv = ["--tiny", "--out", str(tmp_path), "--data", str(caseops_dataset), "--steps", "1", "--ttt-seconds", "2",
            "--val-docs", "6", "--calibration-batches", "1"]  # fmt: skip
    result = gpu_check.main(argv)
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(result))
    stages = saved["stages"]
    assert set(stages) == {"env", "train", "export", "ttt", "eval", "eval_steady", "parity"}
    assert not [name for name, r in stages.items() if "error" in r or "skipped" in r]
    train = stages["train"]
    for mode in ("looping_off", "looping_on"):
        assert train[mode]["recompiles_in_timed_steps"] == {"frames": 0, "graphs": 0}
        assert np.isfinite(train[mode]["last_loss"]) and train[mode]["tokens_per_s"] > 0
    on, off = train["looping_on"]["train_flops_per_token"], train["looping_off"]["train_flops_per_token"]
    assert on > off  # the recurrence adds virtual layers
    assert stages["export"]["artifact_bytes"] == stages["export"]["code_bytes"] + stages["export"]["model_bytes"]
    assert stages["ttt"]["chunks_done"] > 0 and all(c["rows"] <= 4 for c in stages["ttt"]["chunks"])
    steady = stages["eval_steady"]
    assert steady["chunked_second"]["val_bpb"] == steady["chunked_first"]["val_bpb"]
    assert steady["sliding_second"]["computed_tokens"] > steady["chunked_second"]["computed_tokens"]
    assert stages["parity"]["sdpa"]["out_rel_err"] == 0.0  # float32 SDPA against itself
    assert saved["projection"]["main_today_s"] > 0


def test_a_stage_that_fails_is_recorded_and_the_next_still_runs(tmp_path):
    check = gpu_check.Check(tmp_path, 100.0, tg.torch.device("cpu"))
    check.stage("broken", 0, lambda: 1 / 0)
    check.stage("late", 1000, lambda: {"never": True})
    check.stage("fine", 0, lambda: {"ok": 1})
    saved = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert saved["broken"]["error"].startswith("ZeroDivisionError") and "skipped" in saved["late"]
    assert saved["fine"]["ok"] == 1


@pytest.mark.parametrize("seq_len,stride", [(2048, 0), (2048, 64), (128, 32), (64, 64)])
def test_computed_tokens_is_eval_segments_in_closed_form(seq_len, stride):
    rng = np.random.default_rng(seq_len + stride)
    lengths = rng.integers(1, 5000, 40)
    tokens = np.concatenate([np.r_[tg.BOS_ID, rng.integers(2, 100, n - 1)] for n in lengths] + [[tg.BOS_ID]])
    segs = tg.eval_segments(tokens, seq_len, stride)
    assert gpu_check.computed_tokens(lengths, seq_len, stride) == sum(n for _, n, _ in segs)


def test_committed_gpu_results_name_the_gpu_and_fill_the_table():
    d = json.loads((ROOT / "bench" / "results" / "gpu_check.json").read_text())
    assert any(g in d["stages"]["env"]["gpu"] for g in ("H100", "H200"))
    table = "\n".join(report.gpu_check(d))
    m = d["stages"]["train"]["looping_on"]
    assert f"| on | {m['first_step_s']:.1f} | {m['step_ms_median']:.1f} |" in table

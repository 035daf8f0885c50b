"""Several gloo ranks under torchrun, as on 8xH100: one clock, one model, one artifact, and one error for all."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
# Short enough to stop mid-schedule: looping at 0.35 of the run and the length switch at 0.5 land mid-run
RANKED = {**TINY, "MAX_WALLCLOCK_SECONDS": "5", "GPTQ_RESERVE_SECONDS": "1", "ITERATIONS": "100000",
          "SEQ_LEN_SCHEDULE": "32@0.5,64@1.0", "TRAIN_BATCH_TOKENS": "1024", "TRAIN_LOG_EVERY": "1000",
          "REPLICA_CHECK_EVERY": "5", "EVAL_STRIDE": "0", "GPTQ_CALIBRATION_BATCHES": "2"}  # fmt: skip


def torchrun(nproc: int, env: dict, dataset: Path, out: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    out.mkdir(exist_ok=True)
    env = {**os.environ, **RANKED, "DATA_PATH": str(dataset), "TOKENIZER_PATH": str(dataset / "tokenizer.model"),
           "LOG_DIR": str(out), "RUN_ID": "run", "PG_FAULT_OUT": str(out), **env}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "tests" / "rank_faults.py")]  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=timeout)


def seen(out: Path, nproc: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def final_bpb(log: str) -> str:
    return re.search(r"^final_roundtrip_exact val_loss:\S+ val_bpb:(\S+)", log, re.M).group(1)


@pytest.mark.parametrize("nproc", [2, 4])
def test_ranks_on_different_clocks_train_one_model_and_score_its_written_bytes(small_dataset, tmp_path, nproc):
    """Rank 1 sleeps 40 ms a step, so its own clock runs behind: the ranks still switch looping and length at the
    same step, end with the same weights, score the same bytes (those written), and a rescore of the .ptz at the
    same world size gives the run's score."""
    p = torchrun(nproc, {"PG_FAULT": "sleep:1:0.04"}, small_dataset, tmp_path / "run")
    assert p.returncode == 0, p.stderr[-3000:]
    log, ranks = (tmp_path / "run" / "run.txt").read_text(), seen(tmp_path / "run", nproc)
    assert "stopping_early:wallclock_cap" in log and re.search(r"^replicas_check step:\d+ ranks:\d+ same:1", log, re.M)
    switches = ranks[0]["switches"]
    assert [s.split()[0] for s in switches] == ["looping:on", "seq_len_change:", "stopping_early:wallclock_cap"]
    assert all(r["switches"] == switches and r["steps"] == ranks[0]["steps"] for r in ranks), ranks
    assert len({r["weights"] for r in ranks}) == 1, "the replicas drifted apart"
    written = __import__("hashlib").sha256((tmp_path / "run" / "run.ptz").read_bytes()).hexdigest()
    assert {r["blob"] for r in ranks} == {written}
    assert f"eval_world_size:{nproc}" in log
    if nproc == 2:  # the replay: a separate process group scoring the written bytes
        env = {"EVAL_ONLY": str(tmp_path / "run" / "run.ptz"), "RUN_ID": "rescore"}
        p = torchrun(nproc, env, small_dataset, tmp_path / "run")
        assert p.returncode == 0, p.stderr[-3000:]
        rescore = (tmp_path / "run" / "rescore.txt").read_text()
        assert final_bpb(rescore) == final_bpb(log) and "compile_warmup:on_eval_clock" in rescore


def errors_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error:")]


def test_an_error_on_one_rank_ends_every_rank_with_one_error_line(small_dataset, tmp_path):
    """Rank 1's training data fails at its 4th batch while rank 0 waits in a collective: both end, the log has
    that one error, and no rank prints a traceback of train_gpt.py."""
    p = torchrun(2, {"PG_FAULT": "raise:1:4"}, small_dataset, tmp_path / "run", timeout=120)
    assert p.returncode != 0
    errors = errors_in((tmp_path / "run" / "run.txt").read_text())
    assert errors == ["error: rank 1: fineweb_train_000000.bin: damaged on this host (injected)"], errors
    assert 'train_gpt.py", line' not in p.stderr, p.stderr[-3000:]


def test_an_artifact_over_budget_ends_every_rank_with_one_error_line(small_dataset, tmp_path):
    """The fit is decided once (rank 0) and its refusal reaches every rank: no rank waits for the others."""
    p = torchrun(2, {"ARTIFACT_MAX_BYTES": "60000"}, small_dataset, tmp_path / "run", timeout=120)
    assert p.returncode != 0
    errors = errors_in((tmp_path / "run" / "run.txt").read_text())
    assert len(errors) == 1 and "> 60000" in errors[0] and "over_budget.ptz" in errors[0], errors
    assert (tmp_path / "run" / "run.over_budget.ptz").is_file() and not (tmp_path / "run" / "run.ptz").exists()
    assert 'train_gpt.py", line' not in p.stderr, p.stderr[-3000:]


def _replicas_worker(rank: int, world: int, init_file: str, out_dir: str):
    import torch
    import torch.distributed as dist

    import train_gpt as tg
    from tests.helpers import tiny_hp

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model, lines, outcome = tg.GPT(tiny_hp()), [], []
    tg.check_replicas(model, 7, world, lines.append)
    if rank == 1:  # one ulp of one weight on one rank
        with torch.no_grad():
            w = model.blocks[2].mlp.fc.weight
            w[3, 5] = torch.nextafter(w[3, 5], torch.tensor(1.0))
    try:
        tg.check_replicas(model, 8, world, lines.append)
    except tg.TrainingError as e:
        outcome.append(str(e))
    Path(out_dir, f"replicas{rank}.json").write_text(json.dumps({"lines": lines, "errors": outcome}))
    dist.barrier()  # all is written: leave without interpreter teardown, where gloo ranks sometimes abort
    os._exit(0)


def test_replicas_that_differ_by_one_ulp_are_one_error_naming_the_step_and_tensor(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_replicas_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        got = json.loads((tmp_path / f"replicas{r}.json").read_text())
        assert got["lines"] == ["replicas_check step:7 ranks:2 same:1", "replicas_check step:8 ranks:2 same:0"]
        assert len(got["errors"]) == 1 and got["errors"][0].startswith("step 8: the ranks' weights differ, first in "
                                                                        "blocks.2.mlp.fc.weight"), got  # fmt: skip

"""Ablations: from the configuration in the environment (the README's CPU configuration), switch off one
technique at a time, train for a fixed number of steps with each seed, and score the exported artifact.

Every run is the script itself (`python3 train_gpt.py`), so what is ablated is exactly what the flagship runs.
Training ablations change the model or optimizer; the quantization ablations (GPTQ, LQER) train the
same model again (CPU training is deterministic for a seed, which the identical pre-quantization scores show)
and differ only in the export; TTT is ablated by scoring each baseline artifact with `EVAL_ONLY` and TTT on.

    PRESET=cpu python3 bench/ablations.py --out bench/results/ablations_cpu.json \
        [--steps 200] [--seeds 1337 42] [--jobs 2] [--only xsa ema]

Results are saved after every run and finished runs are skipped on a rerun (the logs and artifacts stay in
--logdir), so an interrupted sweep resumes; a run that had not finished is redone after its files are removed.
With --jobs 2 two single-threaded runs share the 2 cores: the scores are those of a 2-thread run (same seed, same
numbers), only the step times are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.record import clear_run, final_scores, parse_log, run_train_gpt, this_machine, torch_version  # noqa: E402
from train_gpt import HPARAMS, Hyperparameters  # noqa: E402

FIXED = {
    "MAX_WALLCLOCK_SECONDS": "0",
    "GPTQ_RESERVE_SECONDS": "0",
    "TTT_ENABLED": "0",
    "EVAL_DIAGNOSTICS": "1",  # the score before quantization too
    "EVAL_MAX_SECONDS": "1e6",  # no deadline: one thread per run on shared cores is not the flagship's clock
}


SWITCHED_ON = {"ttt", "progressive_context", "short_chunks"}  # off in the baseline: rows switch them on


def resolved(env: dict) -> Hyperparameters:
    """The configuration the environment's settings (presets included) resolve to, other variables ignored."""
    return Hyperparameters({k: v for k, v in env.items() if k in {h[0] for h in HPARAMS}})


def switched_on(env: dict) -> set[str]:
    """SWITCHED_ON, and the recurrence, parallel lanes, partial RoPE and the logit cap where the configuration
    leaves them out (PRESET=cpu)."""
    hp = resolved(env)
    return SWITCHED_ON | ({"recurrence"} if not hp.num_loops else set()) | (
        {"parallel_residuals"} if hp.parallel_start_layer >= hp.num_layers else set()) | (
        {"partial_rope"} if hp.rope_dims >= hp.model_dim // hp.num_heads else set()) | (
        {"asym_logit"} if not hp.logit_softcap else set())  # fmt: skip


# Rows that only change the evaluation score the baseline's artifact again (EVAL_ONLY), compared with a stage of
# another row: name -> (reference row, its stage, this row's stage).
EVAL_ONLY = {"ttt": ("baseline", "roundtrip", "ttt"), "ngram_tilt": ("baseline", "roundtrip", "roundtrip"),
             "short_chunks": ("ttt", "ttt", "ttt")}  # fmt: skip


def ablations(env: dict) -> dict[str, tuple[str, dict]]:
    """name -> (what changes against the baseline, env overrides). The progressive context takes a quarter, a
    half, then all of the length over the flagship's fractions (its thirds,
    1024 and 2048 of 3072, would not divide the CPU batch), its LR ramp scaled from 32 of about 4,900 steps; the
    short-document chunks are #2014's."""
    hp = resolved(env)
    heads, dim, layers, n = hp.num_heads, hp.model_dim, str(hp.num_layers), hp.train_seq_len
    hd = dim // heads
    lanes = hp.parallel_start_layer < hp.num_layers
    return {
        "baseline": ("nothing (the configuration as given)", {}),
        "xsa": ("XSA off", {"XSA_LAST_N": "0"}),
        "smear_gate": ("SmearGate off", {"SMEAR_GATE": "0"}),
        "parallel_residuals": ("parallel residual lanes off", {"PARALLEL_START_LAYER": layers}) if lanes else (
            "parallel residual lanes on (the last layer)", {"PARALLEL_START_LAYER": str(hp.num_layers - 1)}),
        "recurrence": ("depth recurrence off", {"NUM_LOOPS": "0"}) if hp.num_loops else (
            "depth recurrence on (2 more passes over LOOP_START..LOOP_END)", {"NUM_LOOPS": "2"}),
        "sparse_attn_gate": ("sparse attention gate off", {"SPARSE_ATTN_GATE": "0"}),
        "partial_rope": ("full RoPE instead of partial", {"ROPE_DIMS": str(dim // heads)}) if hp.rope_dims < hd else (
            "partial RoPE on (a quarter of the head dims)", {"ROPE_DIMS": str(hd // 4)}),
        "muoneq_r_polar": ("MuonEq-R + Polar Express off (quintic)", {"MUON_NS": "quintic", "MUON_ROW_NORM": "0"}),
        "ema": ("EMA off", {"EMA_HORIZON_FRAC": "0"}),
        "gptq": ("GPTQ off (round to nearest)", {"GPTQ": "0"}),
        "lqer": ("LQER off", {"LQER_TOP_K": "0"}),
        "ttt": ("TTT on: the baseline artifact scored with phased LoRA TTT", {"TTT_ENABLED": "1"}),
        "asym_logit": ("AsymLogit off (one fixed symmetric cap)", {"LOGIT_ASYM": "0"}) if hp.logit_softcap else (
            "logit cap on (AsymLogit from a cap of 30)", {"LOGIT_SOFTCAP": "30"}),
        "progressive_context": ("progressive training context on", {
            "SEQ_LEN_SCHEDULE": f"{n // 4}@0.1,{n // 2}@0.7,{n}@1.0", "SEQ_LEN_WARMUP_STEPS": "2"}),
        "ngram_tilt": ("n-gram tilt off: the baseline artifact scored without it", {"NGRAM_TILT": "0"}),
        "short_chunks": ("short-document TTT chunks on: against the TTT row",
                         {"TTT_ENABLED": "1", "TTT_SHORT_CHUNKS": "256:8,2000:24"}),
    }  # fmt: skip


class Sweep:
    """The results file, rewritten (atomically) after every finished run."""

    def __init__(self, path: Path, header: dict):
        self.path, self.lock = path, threading.Lock()
        old = json.loads(path.read_text()) if path.exists() else {}
        same = {k: old.get(k) for k in header} == header
        if old and not same:
            print(f"{path}: steps, seeds or configuration differ from this sweep's; starting it afresh", flush=True)
        self.data = old if same else {**header, "runs": {}}

    def done(self, name: str, seed: int) -> bool:
        return str(seed) in self.data["runs"].get(name, {})

    def save(self):
        self.data["date"] = date.today().isoformat()  # of the last finished run
        self.data["machine"] = f"{this_machine()}, torch {torch_version()}"
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)

    def add(self, name: str, seed: int, result: dict):
        with self.lock:
            self.data["runs"].setdefault(name, {})[str(seed)] = result
            self.save()
        stages = " ".join(f"{k}:{v['val_bpb']:.5f}" for k, v in result["stages"].items())
        print(f"ablation:{name} seed:{seed} {stages}", flush=True)


def train_run(name: str, overrides: dict, seed: int, base: dict) -> dict:
    r = parse_log(run_train_gpt({**base, **overrides, "SEED": str(seed), "RUN_ID": f"{name}_seed{seed}"}))
    return {"stages": r.stages, "model_bytes": r.model_bytes, "artifact_bytes": r.artifact_bytes, "steps": r.steps,
            "step_avg_ms": r.step_avg_ms, "eval_parts": r.eval_parts}  # fmt: skip


def eval_run(name: str, overrides: dict, seed: int, base: dict, logdir: Path) -> dict:
    """The baseline artifact of this seed, scored again with the row's evaluation settings."""
    run_id, artifact = f"{name}_seed{seed}", logdir / f"baseline_seed{seed}.ptz"
    env = {**base, **overrides, "EVAL_ONLY": str(artifact), "RUN_ID": run_id}
    text = run_train_gpt(env).read_text()
    return {"stages": final_scores(text), "model_bytes": artifact.stat().st_size}


def run_row(sweep: Sweep, table: dict, name: str, seed: int, base: dict, logdir: Path) -> None:
    """One row for one seed, unless the sweep holds its result. A run redone after an attempt that did not finish
    first removes that attempt's files (train_gpt.py refuses an existing log); a finished run's are kept, the TTT
    rows read the baseline's artifact."""
    if sweep.done(name, seed):
        return
    stale = clear_run(logdir, f"{name}_seed{seed}")
    if stale:
        print(f"ablation:{name} seed:{seed} removed_stale:{','.join(p.name for p in stale)}", flush=True)
    if name in EVAL_ONLY:
        sweep.add(name, seed, eval_run(name, table[name][1], seed, base, logdir))
    else:
        sweep.add(name, seed, train_run(name, table[name][1], seed, base))


def sweep_header(env: dict, steps: int, seeds: list[int]) -> dict:
    """What makes two sweeps the same: steps, seeds, the environment's settings and what they resolve to, so a
    preset whose values changed since (PRESET=cpu, say) starts the sweep afresh instead of mixing results."""
    names = {h[0] for h in HPARAMS} - {*FIXED, "ITERATIONS"}
    config = {k: env[k] for k in sorted(env) if k in names}
    hp = resolved(env)
    values = {n: str(getattr(hp, n.lower())) for n in sorted(names - {"RUN_ID", "LOG_DIR", "SEED"})}
    return {"steps": steps, "seeds": seeds, "config": config, "hparams": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 42])
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each with cores/jobs threads")
    ap.add_argument("--logdir", type=Path, default=ROOT / "bench" / "logs" / "ablations")
    ap.add_argument("--only", nargs="*", help="a subset of the ablations (the baseline always runs)")
    args = ap.parse_args()
    table = ablations(dict(os.environ))
    unknown = set(args.only or []) - set(table)
    if unknown:
        raise SystemExit(f"--only {' '.join(sorted(unknown))}: expected names among {', '.join(table)}")
    names = ["baseline"] + [n for n in table if n != "baseline" and (not args.only or n in args.only)]
    args.logdir.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(args.out, sweep_header(dict(os.environ), args.steps, args.seeds))
    on = switched_on(dict(os.environ))
    sweep.data["ablations"] = {n: {"change": c, "overrides": o, "switches_on": n in on,
                                   "eval_only": EVAL_ONLY.get(n)} for n, (c, o) in table.items()}  # fmt: skip
    sweep.save()
    # LOCAL_WORLD_SIZE is how train_gpt.py divides the cores between processes, as under torchrun
    base = {**os.environ, **FIXED, "ITERATIONS": str(args.steps), "LOG_DIR": str(args.logdir.resolve()),
            "LOCAL_WORLD_SIZE": str(args.jobs)}  # fmt: skip

    def job(name: str, seed: int):
        run_row(sweep, table, name, seed, base, args.logdir)

    with ThreadPoolExecutor(args.jobs) as pool:  # the baselines first: the TTT rows read their artifacts
        for f in [pool.submit(job, "baseline", s) for s in args.seeds]:
            f.result()
        for f in [pool.submit(job, n, s) for n in names[1:] for s in args.seeds]:
            f.result()


if __name__ == "__main__":
    main()

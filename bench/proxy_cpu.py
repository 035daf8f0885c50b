"""CPU equal-time yardstick (issue 21): PRESET=naive, the official naive baseline's recipe at 4 x 128 on the
offline sample (its int8+zlib export, PyTorch's init with zeroed output projections, attention across documents,
its optimizer and schedules; 16,384 tokens a step), against PRESET=cpu, this project's CPU configuration, each
trained for the same 300 s on 2 cores and scored after its artifact round trip on the validation head. PRESET=cpu
runs with TTT on and EVAL_DIAGNOSTICS=1, so its round-trip score (no TTT: the comparison) and its TTT score
come from one run. The anchor: the official baseline script, patched only to run on CPU, reached 2.2268 BPB at
this recipe in 300 s (342 steps; issue 21).

    python3 bench/proxy_cpu.py --out bench/results/proxy_cpu.json [--seeds 1337 42] [--only naive cpu]

Runs one configuration at a time (concurrent CPU runs distort the clock); every run's log is kept beside the
results (bench/logs/proxy_cpu/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.record import clear_run, parse_log, run_train_gpt, this_machine, torch_version  # noqa: E402

ANCHOR_BPB, ANCHOR_STEPS = 2.2268, 342  # the official naive-baseline script at this recipe, 300 s, 2 cores
CONFIGS = {
    "naive": {"PRESET": "naive", "EVAL_DIAGNOSTICS": "1"},
    "cpu": {"PRESET": "cpu", "EVAL_DIAGNOSTICS": "1"},
    # the anchor's 342 steps whatever this machine's speed today (the LR schedule then runs on steps, not time)
    "naive_342_steps": {"PRESET": "naive", "EVAL_DIAGNOSTICS": "1", "ITERATIONS": "342", "MAX_WALLCLOCK_SECONDS": "0"},
}


def run(name: str, seed: int, logdir: Path) -> dict:
    run_id = f"{name}_seed{seed}"
    clear_run(logdir, run_id)  # a rerun of this configuration and seed replaces the earlier one
    env = {k: v for k, v in os.environ.items() if k not in ("PRESET", "RUN_ID", "LOG_DIR", "SEED")}
    env = {**env, **CONFIGS[name], "SEED": str(seed), "RUN_ID": run_id, "LOG_DIR": str(logdir)}
    r = parse_log(run_train_gpt(env))
    keep = ("stages", "steps", "step_avg_ms", "train_tokens", "train_s", "artifact_bytes", "model_bytes", "eval_s")
    out = {k: v for k, v in asdict(r).items() if k in keep}
    return {**out, "eval_parts": r.eval_parts, "tokens_per_s": r.train_tokens / r.train_s, "env": CONFIGS[name]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 42])
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), default=["naive", "cpu"])
    ap.add_argument("--logdir", type=Path, default=ROOT / "bench" / "logs" / "proxy_cpu")
    args = ap.parse_args()
    args.logdir.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = {name: {} for name in args.only}
    for seed in dict.fromkeys(args.seeds):  # a seed given twice runs once
        for name in args.only:
            results[name][str(seed)] = run(name, seed, args.logdir)
            print(f"proxy_cpu:{name} seed:{seed} {json.dumps(results[name][str(seed)]['stages'])}", flush=True)
    runs = {**{k: v for k, v in old.get("runs", {}).items() if k not in results}, **results}
    out = {"date": date.today().isoformat(), "machine": f"{this_machine()}, torch {torch_version()}",
           "commands": [*old.get("commands", []), "python3 bench/proxy_cpu.py " + " ".join(sys.argv[1:])],
           "anchor_bpb": ANCHOR_BPB,
           "anchor_steps": ANCHOR_STEPS, "runs": runs}  # fmt: skip
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()

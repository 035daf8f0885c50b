"""Evaluation variants of one saved artifact: no TTT, LoRA TTT, and LoRA TTT with phased global SGD.

Each variant is a separate `EVAL_ONLY=<artifact> python3 train_gpt.py` run with the configuration in the
environment (the one the artifact was trained with, e.g. the README's CPU configuration) plus the variant's
overrides, so what is measured is exactly the script's evaluation, its eval clock included:

    PRESET=cpu python3 bench/ttt.py --artifact logs/<run>.ptz --out bench/results/ttt_cpu.json

Runs one variant at a time (concurrent CPU runs oversubscribe the cores and distort the clock).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.record import eval_clock, final_scores, run_train_gpt  # noqa: E402

VARIANTS = {  # overrides on top of the environment's configuration
    "no_ttt": {"TTT_ENABLED": "0"},
    "lora_ttt": {"TTT_PHASES": "0"},
    "phased_ttt": {},
    "phased_ttt_sgd_lr3e-3": {"TTT_SGD_LR": "3e-3"},
    "phased_ttt_sgd_lr1e-2": {"TTT_SGD_LR": "1e-2"},
}


def parse_log(text: str) -> dict:
    """The score lines and the eval clock by part (an EVAL_ONLY log has no training lines for parse_log)."""
    stages, clock = final_scores(text), eval_clock(text)
    out = {f"final_{s}_exact": stages[s] for s in ("roundtrip", "ttt") if s in stages}
    if clock:
        out["eval_time_s"], out["eval_parts_s"] = clock
    return out


def run_variant(artifact: Path, overrides: dict, logdir: Path, name: str) -> dict:
    env = {**os.environ, **overrides, "EVAL_ONLY": str(artifact), "RUN_ID": name, "LOG_DIR": str(logdir)}
    return {"overrides": overrides, **parse_log(run_train_gpt(env).read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="a subset of the variants")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as logdir:
        for name in dict.fromkeys(args.only or VARIANTS):  # each once: a repeat would reuse its RUN_ID
            results[name] = run_variant(args.artifact.resolve(), VARIANTS[name], Path(logdir), name)
            print(name, json.dumps(results[name]), flush=True)
    if args.out.exists():  # a partial run (--only) adds to the variants already measured
        results = {**json.loads(args.out.read_text())["variants"], **results}
    tmp = args.out.with_suffix(".tmp")
    out = {"artifact": str(args.artifact), "date": date.today().isoformat(), "variants": results}
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()

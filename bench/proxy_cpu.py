"""CPU equal-time proxy: the flagship architecture scaled down (the README's CPU configuration, from the
environment) against a naive-baseline configuration of the same script at the same width and depth, each
trained for the same wallclock, then exported and scored on the validation head.

The naive baseline reproduces the challenge's original choices with env overrides only: U-Net skips without
gates, full RoPE, q gain 1.5, ReLU^2 MLP 2x, plain Muon (fixed quintic coefficients, no row normalisation, no
weight decay) with the baseline's learning rates, no EMA, none of XSA / SmearGate / sparse gate / parallel
lanes / recurrence / layer-norm scale, int8 per-row round-to-nearest + zlib, no TTT.

    PRESET=cpu python3 bench/proxy_cpu.py --out bench/results/proxy_cpu.json [--seeds 1337]

Runs one configuration at a time (concurrent CPU runs distort the clock).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402
from tools.record import parse_log, run_train_gpt  # noqa: E402

NAIVE = tg.NAIVE  # the naive baseline's recipe as switches of train_gpt.py (PRESET=naive at the CPU shape)


def naive_overrides(env: dict) -> dict:
    """NAIVE plus what depends on the shape: full RoPE over the head, no parallel lanes."""
    hp = tg.Hyperparameters({k: v for k, v in env.items() if k in {h[0] for h in tg.HPARAMS}})  # presets resolved
    return {**NAIVE, "ROPE_DIMS": str(hp.model_dim // hp.num_heads), "PARALLEL_START_LAYER": str(hp.num_layers)}


def run(name: str, overrides: dict, seed: int, logdir: Path) -> dict:
    env = {**os.environ, "EVAL_DIAGNOSTICS": "1", **overrides, "SEED": str(seed), "RUN_ID": f"{name}_seed{seed}",
           "LOG_DIR": str(logdir)}  # fmt: skip
    r = parse_log(run_train_gpt(env))
    keep = ("stages", "steps", "step_avg_ms", "train_tokens", "train_s", "artifact_bytes", "model_bytes", "eval_s")
    out = {k: v for k, v in asdict(r).items() if k in keep}
    return {**out, "eval_parts": r.eval_parts, "tokens_per_s": r.train_tokens / r.train_s, "overrides": overrides}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    args = ap.parse_args()
    configs = {"flagship_cpu": {}, "naive_baseline_cpu": naive_overrides(dict(os.environ))}
    results = {name: {} for name in configs}
    with tempfile.TemporaryDirectory() as logdir:
        for seed in dict.fromkeys(args.seeds):  # each once: a repeat would reuse its RUN_ID in the same folder
            for name, overrides in configs.items():
                results[name][str(seed)] = run(name, overrides, seed, Path(logdir))
                print(name, seed, json.dumps(results[name][str(seed)]["stages"]), flush=True)
    tmp = args.out.with_suffix(".tmp")
    wallclock = os.environ.get("MAX_WALLCLOCK_SECONDS")
    tmp.write_text(json.dumps({"wallclock_s": wallclock, "date": date.today().isoformat(), "runs": results}, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()

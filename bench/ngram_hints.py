"""The n-gram tilt's hint precompute: its time at the full validation size, and how often its hints fire and
are right on real text. Writes bench/results/ngram_hints.json (bench/report.py renders it).

    python3 bench/ngram_hints.py --out bench/results/ngram_hints.json

Time: `with_hints` as the evaluation runs it (the documents put in TTT's scoring order, the hints computed, put
back) on a synthetic stream of 47.8M tokens, uniform over the 8,192-token vocabulary, in 50,000 documents whose
lengths are drawn from the validation sample's. Here on CPU, where the two sorts dominate; the evaluation
computes it on the GPU. Quality: on the sample's shards (the official validation head, and the 5,000 training
documents as a larger stream), the share of targets that get a hint and the share of hints that name the target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_check import SAMPLE, full_val_lengths, sample_val_tokens  # noqa: E402

import train_gpt as tg  # noqa: E402

FULL_VAL_TOKENS = 47_851_520  # the 50,000-document split (reference_rulings.md, the leak fingerprints)


def synthetic_stream(lengths: np.ndarray, vocab: int, seed: int = 0) -> np.ndarray:
    """Documents of the given lengths in a random order, each a BOS then uniform tokens, and a final BOS."""
    gen = np.random.default_rng(seed)
    lengths = gen.permutation(lengths)
    tokens = gen.integers(2, vocab, int(lengths.sum()) + 1)
    tokens[np.concatenate([[0], np.cumsum(lengths)])] = tg.BOS_ID
    return tokens


def hint_quality(tokens: np.ndarray, hp: tg.Hyperparameters) -> dict:
    val = tg.with_hints(tg.ValData(tokens, np.ones_like(tokens), "ones"), hp, torch.device("cpu"))
    hinted = val.hints[1:] >= 0
    right = val.hints[1:][hinted] == tokens[1:][hinted]
    return {"targets": len(tokens) - 1, "hinted_share": float(hinted.mean()),
            "hint_right_share": float(right.mean()) if hinted.any() else None}  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--tokens", type=int, default=FULL_VAL_TOKENS)
    args = ap.parse_args(argv)
    hp = tg.Hyperparameters({})  # the flagship's tilt: order 16, threshold 0.8, scored in TTT's order
    lengths = full_val_lengths(sample_val_tokens(args.data))
    lengths = np.maximum(1, np.round(lengths * args.tokens / lengths.sum()).astype(np.int64))
    stream = synthetic_stream(lengths, hp.vocab_size)
    val = tg.ValData(stream, np.ones_like(stream), "ones")
    t0 = time.perf_counter()
    tg.ngram_hints(torch.from_numpy(stream), hp.ngram_order, hp.ngram_threshold)
    alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    tg.with_hints(val, hp, torch.device("cpu"))
    total = time.perf_counter() - t0
    train = np.concatenate([tg.load_shard(str(p)) for p in sorted(args.data.glob("fineweb_train_*.bin"))])
    command = "python3 bench/ngram_hints.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "command": command, "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads)",
        "order": hp.ngram_order, "threshold": hp.ngram_threshold,
        "full_size": {"tokens": len(stream), "docs": len(lengths), "ngram_hints_s": alone, "with_hints_s": total},
        "quality": {"val_head": hint_quality(sample_val_tokens(args.data), hp),
                    "train_sample": hint_quality(train.astype(np.int64), hp)},
    }  # fmt: skip
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

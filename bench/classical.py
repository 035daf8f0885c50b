"""Classical compressors as a reference point: bits per byte of the official validation head (the 108
complete documents the models are scored on, 313,038 UTF-8 bytes) under xz, zstd, brotli and, where
installed (pip install pyppmd), PPMd; alone, and with the training sample as preceding context, where the
charge is the marginal size C(train + val) - C(train).

    python3 bench/classical.py --out bench/results/classical.json

Reads ../shared/data (or PG_SHARED_DATA). Documents are joined with a newline; BPB = 8 x bytes / 313,038.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import time
from datetime import date
from pathlib import Path

import brotli
import zstandard

SHARED = Path(os.environ.get("PG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _ppmd(data: bytes) -> int:
    import pyppmd

    return len(pyppmd.compress(data, max_order=6, mem_size=256 << 20))


COMPRESSORS = {  # name -> (compressed size of bytes, setting); windows large enough for the whole sample where possible
    "xz -9e": (lambda b: len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)), "LZMA2, 64 MiB dictionary"),
    "zstd -22 --ultra": (
        lambda b: len(zstandard.ZstdCompressor(level=22).compress(b)),
        "level 22, 128 MiB window",
    ),
    "brotli q11": (lambda b: len(brotli.compress(b, quality=11, lgwin=24)), "quality 11, 16 MiB window (its max)"),
    "ppmd o6": (_ppmd, "PPMd var. H, order 6, 256 MiB (pyppmd)"),
}


def read_docs(name: str, complete_only: bool = False) -> list[str]:
    docs = [json.loads(line) for line in (SHARED / name).open(encoding="utf-8")]
    return [d["text"] for d in docs if d.get("complete", True) or not complete_only]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    val_docs = read_docs("fineweb_val_head.jsonl", complete_only=True)
    val = "\n".join(val_docs).encode()
    val_bytes = sum(len(d.encode()) for d in val_docs)
    train = "\n".join(read_docs("fineweb_train_sample.jsonl")).encode() + b"\n"
    results = {"val_docs": len(val_docs), "val_bytes": val_bytes, "train_bytes": len(train), "compressors": {}}
    for name, (size, setting) in COMPRESSORS.items():
        try:
            t0 = time.perf_counter()
            alone = size(val)
            with_train, train_only = size(train + val), size(train)
        except ImportError:
            results["compressors"][name] = {"setting": setting, "status": "not installed"}
            print(f"classical {name}: not installed", flush=True)
            continue
        row = {"setting": setting, "alone_bytes": alone, "alone_bpb": 8 * alone / val_bytes,
               "marginal_bytes": with_train - train_only, "marginal_bpb": 8 * (with_train - train_only) / val_bytes,
               "seconds": time.perf_counter() - t0}  # fmt: skip
        results["compressors"][name] = row
        print(f"classical {name}: alone {row['alone_bpb']:.4f} bpb, with train context {row['marginal_bpb']:.4f} bpb "
              f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({**results, "date": date.today().isoformat()}, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()

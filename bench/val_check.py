"""The validation checks of issue 32 at full size, on CPU, through train_gpt.py's own functions: the sha256 of the
validation shard and its byte sidecar against manifest.json at the whole CaseOps set's 47,853,343 tokens (synthetic
files of that size), and the per-document byte proof over 50,000 documents (the sample's documents replicated, for
CaseOps with its sidecar and for sp1024 with the tokenizer's tables), in one process and as one rank of 8; then
load_validation end to end on the replicated CaseOps set (reading, hashing, proving). Seconds are wall and this
process's CPU time (the machine may be shared: CPU time is what the check costs).

    python3 bench/val_check.py --out bench/results/val_check.json [--data data/datasets] [--docs 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402
from data import shards  # noqa: E402
from tools.record import this_machine  # noqa: E402

CASEOPS_TOKENS = 47_853_343  # the whole CaseOps validation stream (the records log it cut: 47,851,520)
SP1024_TOKENS = 63_779_841  # the fewest the records' count allows (63,779,840 cut to a multiple of 1024)
SAMPLES = {"caseops": ("sample_caseops_sp8192", 8192, CASEOPS_TOKENS), "sp1024": ("sample_sp1024", 1024, SP1024_TOKENS)}


def timed(fn, *args) -> dict:
    w, c = time.perf_counter(), time.process_time()
    fn(*args)
    return {"wall_s": round(time.perf_counter() - w, 6), "cpu_s": round(time.process_time() - c, 6)}


def as_rank(rank: int, world: int):
    """train_gpt's view of torch.distributed as rank `rank` of `world` (the all-reduce adds nothing: the other ranks
    are not there, and each rank's share is what is timed)."""
    d = tg.dist
    saved = {k: getattr(d, k) for k in ("is_initialized", "get_rank", "get_world_size", "get_backend", "all_reduce")}
    d.is_initialized, d.get_rank, d.get_world_size = lambda: True, lambda: rank, lambda: world
    d.get_backend, d.all_reduce = lambda: "gloo", lambda t: t
    return lambda: [setattr(d, k, v) for k, v in saved.items()]


def hashing(tmp: Path, n_tokens: int, repeats: int) -> dict:
    """check_manifest on a synthetic shard and sidecar of n_tokens each (and a stand-in tokenizer), listed in a
    manifest (page cache warm: the files were just written, as on a machine that downloaded or read them before the
    run)."""
    folder = tmp / "hash"
    folder.mkdir()
    rng = np.random.default_rng(0)
    shards.write_shard(folder / "fineweb_val_000000.bin", rng.integers(0, 8192, n_tokens, dtype=np.uint16))
    shards.write_shard(folder / "fineweb_val_bytes_000000.bin", rng.integers(0, 8, n_tokens, dtype=np.uint16))
    paths = [str(folder / "fineweb_val_000000.bin"), str(folder / "fineweb_val_bytes_000000.bin")]
    hp = SimpleNamespace(data_path=str(folder), tokenizer_path=str(folder / "tokenizer.model"))
    Path(hp.tokenizer_path).write_bytes(b"a stand-in tokenizer: only its sha256 is read")
    tokenizer = {"sha256": tg.file_sha256(hp.tokenizer_path)}
    manifest = {"tokenizer": tokenizer, "shards": shards.checksums([Path(p) for p in paths])}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    runs = [timed(tg.check_manifest, hp, paths) for _ in range(repeats)]
    assert tg.check_manifest(hp, paths) == ("ok", "ok")
    size = sum(os.path.getsize(p) for p in paths)
    shutil.rmtree(folder)
    return {"tokens": n_tokens, "files": 2, "bytes": size, "runs": runs}


def replicate(val: tg.ValData, docs: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample's documents in order, again and again, until `docs` documents: tokens and bytes charged."""
    starts = [*np.flatnonzero(val.tokens == tg.BOS_ID), len(val.tokens)]
    order = [i % (len(starts) - 1) for i in range(docs)]
    pick = lambda a: np.concatenate([a[starts[i] : starts[i + 1]] for i in order])
    return pick(val.tokens), pick(val.target_bytes)


def proof(data: Path, name: str, docs: int, tmp: Path) -> dict:
    folder, vocab, official = SAMPLES[name]
    src = data / folder
    hp = SimpleNamespace(data_path=str(src), tokenizer_path=str(src / "tokenizer.model"), vocab_size=vocab)
    sp = tg.load_tokenizer(hp.tokenizer_path, vocab)
    val = tg.load_validation(hp, sp)
    tokens, charged = replicate(val, docs)
    prove = lambda: tg.prove_bytes(tokens, charged, sp, val.byte_source)
    out = {"sample": str(src), "byte_source": val.byte_source, "docs": docs, "tokens": int(len(tokens)),
           "official_tokens": official, "one_process": timed(prove)}  # fmt: skip
    restore = as_rank(0, 8)
    try:
        out["rank_0_of_8"] = timed(prove)
    finally:
        restore()
    if name == "caseops":  # the whole of load_validation on the replicated set, written as a dataset
        full = tmp / "full"
        full.mkdir()
        shutil.copy(src / "tokenizer.model", full / "tokenizer.model")
        shards.write_shard(full / "fineweb_val_000000.bin", tokens)
        shards.write_shard(full / "fineweb_val_bytes_000000.bin", charged)
        manifest = json.loads((src / "manifest.json").read_text())
        manifest["shards"] = shards.checksums(sorted(full.glob("fineweb_val_*.bin")))
        (full / "manifest.json").write_text(json.dumps(manifest))
        hp.data_path, hp.tokenizer_path = str(full), str(full / "tokenizer.model")
        out["load_validation"] = timed(tg.load_validation, hp, sp)
        shutil.rmtree(full)
    scale = official / out["tokens"]  # the proof's cost is linear in tokens
    out["projected_cpu_s"] = {"one_process": round(out["one_process"]["cpu_s"] * scale, 1),
                              "rank_of_8": round(out["rank_0_of_8"]["cpu_s"] * scale, 1)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="JSON results (e.g. bench/results/val_check.json)")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "datasets", help="the folder of the two samples")
    ap.add_argument("--docs", type=int, default=50_000, help="documents of the replicated validation sets")
    ap.add_argument("--hash-tokens", type=int, default=CASEOPS_TOKENS, help="tokens of the synthetic shard and sidecar")
    ap.add_argument("--repeats", type=int, default=3, help="times the hashing is timed")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="val_check_"))
    try:
        load = f"load average {os.getloadavg()[0]:.1f} at start"
        result = {"date": date.today().isoformat(), "machine": f"{this_machine()}, {load}",
                  "command": "python3 bench/val_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "hashing": hashing(tmp, a.hash_tokens, a.repeats),
                  "proof": {name: proof(a.data, name, a.docs, tmp) for name in SAMPLES}}  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

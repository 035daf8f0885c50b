"""Build the ready-to-train datasets the demo and the tests use, in one command:

    python data/prepare.py                 # sp1024 and CaseOps sp8192
    python data/prepare.py --variant sp1024

From the offline sample (PG_SHARED_DATA, default ../shared/data beside the repository):
validation = the complete documents of fineweb_val_head.jsonl (the official val split's head),
training = fineweb_train_sample.jsonl, encoded with the official tokenizers. Without that folder
but with network, it downloads the official val split and one train shard from the hub instead.
Each dataset is verified (data/verify.py) before it is reported ready; an up-to-date one (same inputs, every
shard matching the checksums of its manifest) is kept, any other rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import download, export, shards, verify
from data import tokenizer as tok

REPO = Path(__file__).resolve().parents[1]
VAL_DOCS = "fineweb_val_head.jsonl"
TRAIN_DOCS = "fineweb_train_sample.jsonl"
SAMPLES = {  # name -> (tokenizer in the shared folder, dataset folder, hub variant as fallback)
    "sp1024": ("fineweb_1024_bpe.model", "sample_sp1024", "sp1024"),
    "caseops": ("fineweb_8192_bpe_caseops_v1.model", "sample_caseops_sp8192", "caseops"),
}


def shared_dir() -> Path:
    return Path(os.environ.get("PG_SHARED_DATA", REPO.parent / "shared" / "data"))


def stale_reason(out: Path, docs: Path, val_docs: Path, model: Path) -> str | None:
    """Why the dataset in out/ must be built again, or None when it is the export of these inputs, intact."""
    try:
        m = json.loads((out / export.MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return "no readable manifest.json"
    same_inputs = (
        m.get("docs", {}).get("sha256") == shards.file_sha256(docs)
        and (m.get("val_docs_file") or {}).get("sha256") == shards.file_sha256(val_docs)
        and m.get("tokenizer", {}).get("sha256") == shards.file_sha256(model)
    )
    if not same_inputs:
        return "built from other documents or another tokenizer"
    try:
        recorded = verify.recorded_checksums(m)
        if recorded is None:  # an export from before checksums: rebuilt, so that verify can check its shards
            return "manifest.json records no shard checksums"
        verify.check_shard_list(out, recorded)
        verify.check_shard_sums(out, recorded)
    except verify.VerifyError as e:
        return str(e)
    return None


def prepare(name: str, root: Path, overwrite: bool = False, log=print) -> Path:
    """Builds (or keeps) one sample dataset and verifies it; returns its folder."""
    model_name, folder, hub_variant = SAMPLES[name]
    shared = shared_dir()
    needed = [shared / VAL_DOCS, shared / TRAIN_DOCS, shared / model_name]
    missing = [p for p in needed if not p.is_file()]
    tokenizer, declared_val_docs = None, None
    if not missing:
        out = root / folder
        stale = "--overwrite" if overwrite else stale_reason(out, needed[1], needed[0], needed[2])
        if stale:
            log(f"prepare:build {out} ({stale})")
            export.export_dataset(needed[1], out, tokenizer=needed[2], val_docs_file=needed[0], overwrite=True, log=log)
        else:
            log(f"prepare:up_to_date {out}")
    else:
        log(f"prepare:no_offline_sample missing:{','.join(str(p) for p in missing)}")
        try:
            out = download.download(hub_variant, 1, root.parent, log=log)
        except download.DownloadError as e:
            raise download.DownloadError(
                f"cannot build the {name} dataset: the offline sample is missing "
                f"({', '.join(str(p) for p in missing)}; set PG_SHARED_DATA to the folder holding them) "
                f"and the hub is not reachable ({e})"
            ) from None
        tokenizer = root.parent / "tokenizers" / download.VARIANTS[hub_variant].tokenizer
        declared_val_docs = export.NUM_VAL_DOCS
    verify.verify(out, tokenizer, declared_val_docs, log=lambda line: log(f"{name}:{line}"))
    log(f"prepare:ready {name} {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=[*SAMPLES, "all"], default="all")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "datasets", help="where dataset folders go")
    ap.add_argument("--overwrite", action="store_true", help="rebuild even when up to date")
    a = ap.parse_args(argv)
    try:
        for name in SAMPLES if a.variant == "all" else [a.variant]:
            prepare(name, a.out, a.overwrite)
    except (download.DownloadError, export.ExportError, verify.VerifyError, shards.ShardError, tok.TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

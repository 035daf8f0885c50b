"""Download the challenge's cached FineWeb shards and tokenizers from the Hugging Face hub.

    python data/download.py --variant sp1024 --train-shards 80     # default: all 80 train shards
    python data/download.py --variant caseops --train-shards 1

Files land in the challenge's local layout: OUT/datasets/<dataset>/ and OUT/tokenizers/ (OUT
defaults to data/). The full validation split is always fetched; --train-shards N takes the
first N train shards of the frozen order. Every file is checked after download (shard header and
size, tokenizer loadable with the expected vocabulary); a file already present and valid is
kept, a bad one is fetched again, and interrupted downloads resume. A complete download ends by
writing the dataset folder's manifest.json (the tokenizer and every shard with its sha256, for
data/verify.py); it is removed before the first fetch, so a folder caught half-way claims nothing.
The network is touched only by HubSource; LocalSource serves a folder laid out like the hub
repository (offline tests, mirrors).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import shards
from data import tokenizer as tok


@dataclass(frozen=True)
class Variant:
    repo_id: str
    dataset: str  # folder under <root>/datasets/
    tokenizer: str  # file under <root>/tokenizers/
    vocab_size: int
    byte_sidecar: bool = False
    root: str = "datasets"  # the export's folder inside the hub repository


CHALLENGE_REPO = "willdepueoai/parameter-golf"
VARIANTS = {
    "sp1024": Variant(CHALLENGE_REPO, "fineweb10B_sp1024", "fineweb_1024_bpe.model", 1024),
    "sp8192": Variant(CHALLENGE_REPO, "fineweb10B_sp8192", "fineweb_8192_bpe.model", 8192),
    "caseops": Variant(
        "romeerp/parameter-golf-caseops-v1",
        "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved",
        "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model",
        8192,
        byte_sidecar=True,
    ),
}
DEFAULT_TRAIN_SHARDS = 80
MANIFEST = "manifest.json"


class DownloadError(RuntimeError):
    """The hub (or mirror) could not give a complete, valid copy; the message says what is missing."""


class LocalSource:
    """A folder laid out like the hub repository."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def list_files(self) -> list[str]:
        if not self.root.is_dir():
            raise DownloadError(f"mirror folder not found: {self.root}")
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def fetch(self, remote: str, dest: Path) -> None:
        src = self.root / remote
        if not src.is_file():
            raise DownloadError(f"{remote} is not in the mirror {self.root}")
        shards.atomic_write(dest, lambda f: f.write(src.read_bytes()))


class HubSource:
    """The Hugging Face hub: the only place this project opens a network connection for data."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id

    def list_files(self) -> list[str]:
        from huggingface_hub import HfApi

        try:
            return sorted(HfApi().list_repo_files(self.repo_id, repo_type="dataset"))
        except Exception as e:  # network, auth or missing repo: all mean "cannot list"
            raise DownloadError(f"cannot list hub dataset {self.repo_id}: {type(e).__name__}: {e}") from None

    def fetch(self, remote: str, dest: Path) -> None:
        from huggingface_hub import hf_hub_download

        # hf_hub_download resumes a partial file kept in local_dir's cache folder and shows a bar.
        staging = dest.parent / ".hub"
        try:
            got = Path(hf_hub_download(self.repo_id, remote, repo_type="dataset", local_dir=staging))
        except Exception as e:
            raise DownloadError(f"cannot download {remote} from {self.repo_id}: {type(e).__name__}: {e}") from None
        os.replace(got, dest)


def check_file(path: Path, variant: Variant) -> None:
    """Raises if a downloaded file is not a valid shard or tokenizer for this variant."""
    if path.suffix == ".model":
        vocab = tok.load_tokenizer(path).vocab_size()
        if vocab != variant.vocab_size:
            raise tok.TokenizerError(f"{path}: vocab size {vocab}, expected {variant.vocab_size}")
    else:
        shards.read_header(path)


def plan(files: list[str], variant: Variant, train_shards: int) -> list[str]:
    """The remote files to fetch: tokenizer, every val shard (and sidecar), the first N train shards."""
    prefix = f"{variant.root}/datasets/{variant.dataset}/"
    kinds: dict[str, list[str]] = {"train": [], "val": [], "val_bytes": []}
    for f in files:
        m = shards.SHARD_RE.match(f[len(prefix) :]) if f.startswith(prefix) else None
        if m:
            kinds[m.group(1)].append(f)
    tokenizer = f"{variant.root}/tokenizers/{variant.tokenizer}"
    missing = [] if tokenizer in files else [tokenizer]
    if not kinds["val"]:
        missing.append(f"{prefix}fineweb_val_*.bin")
    if variant.byte_sidecar and len(kinds["val_bytes"]) != len(kinds["val"]):
        missing.append(f"{prefix}fineweb_val_bytes_*.bin (one per val shard)")
    if missing:
        raise DownloadError("the repository lacks: " + ", ".join(missing))
    if train_shards > len(kinds["train"]):
        raise DownloadError(f"asked for {train_shards} train shards but {variant.dataset} has {len(kinds['train'])}")
    val = sorted(kinds["val"]) + (sorted(kinds["val_bytes"]) if variant.byte_sidecar else [])
    return [tokenizer, *val, *sorted(kinds["train"])[:train_shards]]


def local_path(out: Path, remote: str, variant: Variant) -> Path:
    return out / re.sub(rf"^{re.escape(variant.root)}/", "", remote)


def write_manifest(dataset: Path, tokenizer: Path, variant_name: str) -> dict:
    """The dataset folder's manifest.json, with the keys of data/export.py's where they apply. It describes
    every shard in the folder, also train shards beyond this download's prefix that an earlier one left: those
    are what train_gpt.py will read."""
    variant = VARIANTS[variant_name]
    sp = tok.load_tokenizer(tokenizer)
    found = {kind: shards.list_shards(dataset, kind) for kind in ("val", "val_bytes", "train")}
    manifest = {
        "format": "parameter-golf-shards/1",
        "source": {"repo_id": variant.repo_id, "variant": variant_name, "dataset": variant.dataset},
        "tokenizer": {
            "file": os.path.relpath(tokenizer, dataset),  # relative: the data/ tree may move as a whole
            "source": f"{variant.repo_id}:{variant.root}/tokenizers/{variant.tokenizer}",
            "sha256": shards.file_sha256(tokenizer),
            "vocab_size": sp.vocab_size(),
            "caseops": tok.is_caseops(sp),
        },
        "bos_id": shards.BOS_ID,
        "byte_sidecar": variant.byte_sidecar,
        "val_tokens": sum(shards.read_header(p) for p in found["val"]),
        "val_shards": len(found["val"]),
        "train_tokens": sum(shards.read_header(p) for p in found["train"]),
        "train_shards": len(found["train"]),
        "shards": shards.checksums([p for paths in found.values() for p in paths]),
    }
    shards.atomic_write(dataset / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return manifest


def download(variant_name: str, train_shards: int, out: Path, source=None, log=print) -> Path:
    """Fetches a variant into out/; returns the dataset folder."""
    if variant_name not in VARIANTS:
        raise DownloadError(f"unknown variant {variant_name!r}; expected one of {sorted(VARIANTS)}")
    if train_shards < 0:
        raise DownloadError(f"--train-shards must be >= 0, got {train_shards}")
    variant = VARIANTS[variant_name]
    source = source or HubSource(variant.repo_id)
    todo = plan(source.list_files(), variant, train_shards)
    dataset = Path(out) / "datasets" / variant.dataset
    (dataset / MANIFEST).unlink(missing_ok=True)  # back, rewritten, only once every file is in place
    from tqdm import tqdm

    staging = set()
    for remote in tqdm(todo, desc=f"download {variant_name}", unit="file", disable=None):
        dest = local_path(Path(out), remote, variant)
        staging.add(dest.parent / ".hub")
        if dest.is_file():
            try:
                check_file(dest, variant)
                continue
            except (shards.ShardError, tok.TokenizerError) as e:
                log(f"download:refetch {dest.name} ({e})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        source.fetch(remote, dest)
        try:
            check_file(dest, variant)
        except (shards.ShardError, tok.TokenizerError) as e:
            dest.unlink()
            raise DownloadError(f"downloaded {remote} but it is not valid: {e}") from None
    for folder in staging:  # partial downloads are kept there until everything succeeded
        shutil.rmtree(folder, ignore_errors=True)
    tokenizer = local_path(Path(out), f"{variant.root}/tokenizers/{variant.tokenizer}", variant)
    write_manifest(dataset, tokenizer, variant_name)
    log(f"download:done variant:{variant_name} files:{len(todo)} dataset:{dataset}")
    return dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="sp1024")
    ap.add_argument("--train-shards", type=int, default=DEFAULT_TRAIN_SHARDS, help="prefix of the train shards")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="local root (default data/)")
    ap.add_argument("--mirror", type=Path, help="a local folder laid out like the hub repository, instead of the hub")
    a = ap.parse_args(argv)
    try:
        download(a.variant, a.train_shards, a.out, LocalSource(a.mirror) if a.mirror else None)
    except (DownloadError, shards.ShardError, tok.TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

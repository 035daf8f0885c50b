"""Verify a dataset folder before training on it: python data/verify.py DIR [--tokenizer M]

Checks every shard's header, magic, version and size; every token id against the tokenizer's
vocabulary; the BOS-delimited document counts of each split (against manifest.json or
--val-docs); that no document is in both train and val (by content hash); and that the bytes the
scorer will charge (tokenizer byte tables, or the CaseOps byte sidecar) add up, document by
document, to the UTF-8 length of the decoded original text of the validation split; and, when
manifest.json records them, that the folder holds exactly the shards it lists, each with the sha256
recorded when it was written (a changed in-vocabulary token passes every other check).
Prints one `key:value` fingerprint line per fact; exit status 1 with a message on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from data import shards
from data import tokenizer as tok


class VerifyError(ValueError):
    """The dataset is not safe to train or score on; the message says why."""


def doc_key(ids: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype="<u2").tobytes(), digest_size=16).digest()


def find_tokenizer(directory: Path, manifest: dict, given: Path | None) -> Path:
    if given is not None:
        return given
    name = (manifest.get("tokenizer") or {}).get("file", "tokenizer.model")
    if (directory / name).is_file():
        return directory / name
    raise VerifyError(f"no tokenizer given and none at {directory / name}; pass --tokenizer PATH.model")


def recorded_checksums(manifest: dict) -> dict | None:
    """The manifest's {file name: {"tokens", "sha256"}}, or None when it records none (an older export, a
    download from before checksums, or no manifest at all)."""
    recorded = manifest.get("shards")
    if recorded is None:
        return None
    ok = isinstance(recorded, dict) and all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in recorded.values()
    )
    if not ok:
        raise VerifyError('manifest.json\'s "shards" must map each shard\'s file name to {"tokens": n, "sha256": hex}')
    return recorded


def some(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def check_shard_list(directory: Path, recorded: dict) -> None:
    """The folder holds exactly the shards the manifest lists: a missing one would silently shrink a split, an
    extra one (train_gpt.py reads every shard it finds) would add data nobody checked."""
    present = {p.name for p in directory.iterdir() if shards.SHARD_RE.match(p.name)}
    missing, extra = sorted(set(recorded) - present), sorted(present - set(recorded))
    if missing:
        raise VerifyError(f"{directory} lacks {some(missing)}, which manifest.json lists (missing shards)")
    if extra:
        raise VerifyError(
            f"{directory} holds {some(extra)}, which manifest.json does not list "
            "(unchecked data: remove, or rebuild the dataset)"
        )


def check_shard_sums(directory: Path, recorded: dict) -> None:
    """Every listed shard's bytes against the sha256 recorded when it was written."""
    for name, entry in sorted(recorded.items()):
        found = shards.file_sha256(directory / name)
        if found != entry["sha256"]:
            raise VerifyError(
                f"{directory / name}: sha256 is {found[:16]}..., manifest.json records {entry['sha256'][:16]}... "
                "(the shard is not the one that was written)"
            )


def load_checked(path: Path, vocab: int) -> np.ndarray:
    """A shard's tokens after the header checks and a check of every id against the vocabulary."""
    tokens = shards.load_shard(path)
    if tokens.size and tokens.max() >= vocab:
        bad = int(np.argmax(tokens >= vocab))
        raise VerifyError(f"{path}: token id {tokens[bad]} at position {bad} is not below the vocab size {vocab}")
    return tokens


def verify(directory: Path, tokenizer: Path | None = None, val_docs: int | None = None, log=print) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise VerifyError(f"dataset folder not found: {directory}")
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except json.JSONDecodeError as e:
        raise VerifyError(f"{manifest_path} is not valid JSON: {e}") from None
    facts: dict = {}

    def fact(key, value):
        facts[key] = value
        log(f"{key}:{value}")

    # The list first (a missing shard named as such, not as a short split); the bytes last, once the checks
    # that say more precisely what is wrong (truncated, bad magic, id out of vocabulary) have passed.
    recorded = recorded_checksums(manifest)
    if recorded is not None:
        check_shard_list(directory, recorded)

    tok_path = find_tokenizer(directory, manifest, tokenizer)
    sp = tok.load_tokenizer(tok_path)
    vocab, caseops = sp.vocab_size(), tok.is_caseops(sp)
    fact("tokenizer_sha256", shards.file_sha256(tok_path))
    want_sha = (manifest.get("tokenizer") or {}).get("sha256")
    if want_sha and want_sha != facts["tokenizer_sha256"]:
        raise VerifyError(
            f"tokenizer {tok_path} does not match the data: its sha256 is {facts['tokenizer_sha256']}, "
            f"but manifest.json says the shards were encoded with {want_sha}"
        )
    fact("vocab_size", vocab)
    fact("caseops", int(caseops))

    val_paths, train_paths = shards.list_shards(directory, "val"), shards.list_shards(directory, "train")
    side_paths = shards.list_shards(directory, "val_bytes")
    if not val_paths:
        raise VerifyError(f"{directory} holds no fineweb_val_*.bin shard")
    val_parts = [load_checked(p, vocab) for p in val_paths]
    val_counts = [part.size for part in val_parts]
    if caseops:
        if [p.name.replace("val_bytes", "val") for p in side_paths] != [p.name for p in val_paths]:
            raise VerifyError(
                f"a CaseOps tokenizer needs one fineweb_val_bytes_*.bin sidecar per val shard; found "
                f"{len(side_paths)} sidecars for {len(val_paths)} val shards"
            )
        side_parts = [shards.load_shard(p) for p in side_paths]
        side_counts = [part.size for part in side_parts]
        if side_counts != val_counts:
            raise VerifyError(f"byte sidecars hold {side_counts} entries but the val shards hold {val_counts} tokens")
    fact("byte_accounting", "sidecar" if caseops else "tables")
    fact("val_shards", len(val_paths))
    fact("val_tokens", sum(val_counts))

    # Validation documents: count, hash, and bytes charged against the decoded original text.
    val = np.concatenate(val_parts)
    if val.size == 0 or val[0] != shards.BOS_ID:
        raise VerifyError(f"{val_paths[0]}: the val split must start with BOS (id {shards.BOS_ID})")
    charged = np.concatenate(side_parts).astype(np.int64) if caseops else tok.charged_bytes(val, tok.byte_tables(sp))
    starts = np.flatnonzero(val == shards.BOS_ID)
    ends = [*starts[1:], val.size]
    val_keys, total_bytes, bad_docs = set(), 0, []
    for i, (a, b) in enumerate(zip(starts, ends)):
        text_bytes = len(tok.decode_doc(sp, val[a + 1 : b], caseops).encode("utf-8"))
        doc_bytes = int(charged[a:b].sum())
        total_bytes += text_bytes
        if doc_bytes != text_bytes:
            bad_docs.append((i, doc_bytes, text_bytes))
        val_keys.add(doc_key(val[a + 1 : b]))
    fact("val_docs", len(starts))
    fact("val_bytes", total_bytes)
    if bad_docs:
        i, got, want = bad_docs[0]
        raise VerifyError(
            f"byte accounting is off in {len(bad_docs)} val documents: e.g. document {i} is charged {got} bytes "
            f"but its decoded original text is {want} UTF-8 bytes"
        )
    declared = val_docs if val_docs is not None else manifest.get("val_docs")
    if declared is not None and len(starts) != declared:
        raise VerifyError(f"the val split holds {len(starts)} documents but {declared} are declared")
    if manifest.get("val_tokens") is not None and sum(val_counts) != manifest["val_tokens"]:
        raise VerifyError(f"the val split holds {sum(val_counts)} tokens, manifest.json says {manifest['val_tokens']}")

    # Training documents: count and look each one up among the validation documents.
    shared = train_docs = train_tokens = 0
    for ids in shards.iter_docs(train_paths, load=lambda p: load_checked(p, vocab)):
        train_docs += 1
        train_tokens += ids.size + 1
        shared += doc_key(ids) in val_keys
    fact("train_shards", len(train_paths))
    fact("train_tokens", train_tokens)
    fact("train_docs", train_docs)
    fact("shared_docs", shared)
    if shared:
        raise VerifyError(f"{shared} training documents are also validation documents (train/val leak)")
    if manifest.get("train_docs") is not None and train_docs != manifest["train_docs"]:
        raise VerifyError(f"the train split holds {train_docs} documents, manifest.json says {manifest['train_docs']}")
    if recorded is None:
        fact("checksums", "none_recorded")
    else:
        check_shard_sums(directory, recorded)
        fact("checksums", "ok")
    fact("verify", "ok")
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="dataset folder with fineweb_{train,val}_*.bin")
    ap.add_argument("--tokenizer", type=Path, help="SentencePiece model (default: the one in DIR's manifest)")
    ap.add_argument("--val-docs", type=int, help="expected validation documents (default: manifest.json's)")
    a = ap.parse_args(argv)
    try:
        verify(a.dir, a.tokenizer, a.val_docs)
    except (VerifyError, shards.ShardError, tok.TokenizerError) as e:
        print(f"verify:FAILED {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export documents to challenge shards: docs JSONL -> (trained or given) tokenizer -> shards.

    python data/export.py --docs docs.jsonl --tokenizer fineweb_1024_bpe.model --out DIR
    python data/export.py --docs docs.jsonl --train-tokenizer 8192 --caseops --out DIR
    python data/export.py --docs train.jsonl --val-docs-file val.jsonl --tokenizer M --out DIR

Validation is the first --val-docs documents (default 50,000, as in the challenge) and training
starts right after them, or, with --val-docs-file, validation comes from that file and training is
the whole --docs file. A train document whose text equals a validation document is dropped, so
no validation document is ever trained on. A tokenizer is trained on training documents only.
Outputs are written under temporary names and moved into place at the end, manifest last.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from data import caseops, shards
from data import tokenizer as tok

NUM_VAL_DOCS = 50_000
ENCODE_BATCH = 512
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"


class ExportError(ValueError):
    """Input that cannot give a correct dataset; the message says what and what was expected."""


def read_docs(path: Path, skipped: dict) -> Iterator[str]:
    """Texts of a JSONL file, one {"text": ...} per line; documents marked "complete": false
    (cut off, like the last one of the official val head) are skipped and counted."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                text = doc["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ExportError(f'{path}:{lineno}: expected a JSON object with a "text" field') from None
            if not isinstance(text, str):
                raise ExportError(f'{path}:{lineno}: "text" must be a string, got {type(text).__name__}')
            if doc.get("complete", True) is False:
                skipped[str(path)] = skipped.get(str(path), 0) + 1
                continue
            yield text


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def take(it: Iterator[str], n: int) -> list[str]:
    out = []
    for text in it:
        out.append(text)
        if len(out) == n:
            break
    return out


class ShardWriter:
    """Streams BOS-prefixed documents into fixed-size shards. With byte tables it also counts the
    bytes charged, and with sidecar=True writes them as an aligned `<kind>_bytes` sidecar."""

    def __init__(self, directory: Path, kind: str, shard_tokens: int, tables=None, sidecar: bool = False):
        self.directory, self.kind, self.shard_tokens = directory, kind, shard_tokens
        self.tables, self.sidecar = tables, sidecar
        self.buf, self.side, self.fill, self.count = [], [], 0, 0
        self.tokens = self.docs = self.bytes = self.normalized = 0

    def add_texts(self, sp, texts, use_caseops: bool, count_normalized: bool = False) -> None:
        """Encodes and adds documents in batches. count_normalized counts the documents whose tokens
        decode to other text (SentencePiece's NFKC and whitespace normalisation): bytes are charged
        on the decoded text, so that difference must be visible."""
        batch = []
        from tqdm import tqdm  # a bar on a terminal only: logs and tests stay greppable

        progress = tqdm(desc=f"encode {self.kind}", unit="doc", disable=None, leave=False)
        for text in itertools.chain(texts, [None]):  # None flushes the last batch
            if text is not None:
                batch.append(text)
            if batch and (text is None or len(batch) == ENCODE_BATCH):
                for doc, ids in zip(batch, tok.encode_docs(sp, batch, use_caseops)):
                    self.add(ids)
                    self.normalized += count_normalized and tok.decode_doc(sp, ids, use_caseops) != doc
                progress.update(len(batch))
                batch = []
        progress.close()
        self.flush()

    def add(self, ids: list[int]) -> None:
        doc = np.array([shards.BOS_ID, *ids], dtype=np.int64)
        side = tok.charged_bytes(doc, self.tables) if self.tables is not None else None
        self.docs += 1
        self.tokens += doc.size
        self.bytes += int(side.sum()) if side is not None else 0
        while doc.size:
            room = self.shard_tokens - self.fill
            self.buf.append(doc[:room])
            if self.sidecar:
                self.side.append(side[:room])
                side = side[room:]
            self.fill += min(room, doc.size)
            doc = doc[room:]
            if self.fill == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if not self.fill:
            return
        shards.write_shard(self.directory / shards.shard_name(self.kind, self.count), np.concatenate(self.buf))
        if self.sidecar:
            name = shards.shard_name(f"{self.kind}_bytes", self.count)
            shards.write_shard(self.directory / name, np.concatenate(self.side))
        self.buf, self.side, self.fill, self.count = [], [], 0, self.count + 1


def existing_outputs(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if shards.SHARD_RE.match(p.name) or p.name in (MANIFEST, TOKENIZER_FILE))


def export_dataset(
    docs: Path,
    out: Path,
    tokenizer: Path | None = None,
    vocab_size: int | None = None,
    use_caseops: bool = False,
    val_docs: int | None = None,
    val_docs_file: Path | None = None,
    overwrite: bool = False,
    shard_tokens: int = shards.SHARD_TOKENS,
    log=print,
) -> dict:
    docs, out = Path(docs), Path(out)
    if (tokenizer is None) == (vocab_size is None):
        raise ExportError("give exactly one of --tokenizer MODEL (use it) or --train-tokenizer VOCAB (train one)")
    for p in [docs, val_docs_file]:
        if p is not None and not Path(p).is_file():
            raise ExportError(f"documents file not found: {p} (expected JSONL, one {{'text': ...}} per line)")
    if val_docs is not None and val_docs < 1:
        raise ExportError(f"--val-docs must be at least 1, got {val_docs}")
    if not 1 <= shard_tokens < 2**31:
        raise ExportError(f"--shard-tokens must be in [1, 2^31), got {shard_tokens}")
    old = existing_outputs(out)
    if old and not overwrite:
        raise ExportError(f"{out} already holds {len(old)} dataset files ({old[0].name}, ...); pass --overwrite")

    skipped: dict = {}
    val_source = Path(val_docs_file) if val_docs_file else docs
    want_val = val_docs if val_docs is not None else (None if val_docs_file else NUM_VAL_DOCS)
    val_iter = read_docs(val_source, skipped)
    val_texts = take(val_iter, want_val) if want_val else list(val_iter)
    if want_val and len(val_texts) < want_val:
        raise ExportError(
            f"asked for {want_val} validation documents but {val_source} holds only {len(val_texts)} complete ones; "
            "refusing to export a smaller validation split"
        )
    if not val_texts:
        raise ExportError(f"{val_source} holds no complete documents for validation")
    val_keys = {text_key(t) for t in val_texts}

    def train_texts(counts: dict) -> Iterator[str]:
        """A fresh pass over the training documents (a tokenizer pass and a shard pass)."""
        it = read_docs(docs, counts)
        if val_docs_file is None:
            take(it, len(val_texts))
        for text in it:
            if text_key(text) in val_keys:
                counts["dropped"] = counts.get("dropped", 0) + 1
                continue
            yield text

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        if tokenizer is None:
            log(f"tokenizer:training vocab:{vocab_size} caseops:{int(use_caseops)}")
            texts = (caseops.encode(t) for t in train_texts({})) if use_caseops else train_texts({})
            trained = tok.train_tokenizer(texts, tmp / "tokenizer", vocab_size, use_caseops)
            trained.rename(tmp / TOKENIZER_FILE)
            (tmp / "tokenizer.vocab").unlink(missing_ok=True)
        else:
            shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
        sp = tok.load_tokenizer(tmp / TOKENIZER_FILE)
        model_caseops = tok.is_caseops(sp)
        if use_caseops and not model_caseops:
            raise ExportError(f"--caseops asked, but {tokenizer} does not reserve the CaseOps operators at ids 4..7")
        use_caseops = model_caseops
        tables = tok.byte_tables(sp)
        log(f"tokenizer:{tokenizer or 'trained'} vocab_size:{sp.vocab_size()} caseops:{int(use_caseops)}")

        val = ShardWriter(tmp, "val", shard_tokens, tables, sidecar=use_caseops)
        val.add_texts(sp, val_texts, use_caseops, count_normalized=True)
        train = ShardWriter(tmp, "train", shard_tokens)
        counts: dict = {}
        train.add_texts(sp, train_texts(counts), use_caseops)
        if train.docs == 0:
            raise ExportError(f"no training documents left in {docs} after the {len(val_texts)} validation documents")
        dropped = counts.pop("dropped", 0)
        skipped.update(counts)  # one file: this pass read it whole, so its count replaces the val pass's

        val_file = {"path": str(val_source), "sha256": shards.file_sha256(val_source)} if val_docs_file else None
        manifest = {
            "format": "parameter-golf-shards/1",
            "docs": {"path": str(docs), "sha256": shards.file_sha256(docs)},
            "val_docs_file": val_file,
            "tokenizer": {
                "file": TOKENIZER_FILE,
                "source": str(tokenizer) if tokenizer else "trained",
                "sha256": shards.file_sha256(tmp / TOKENIZER_FILE),
                "vocab_size": sp.vocab_size(),
                "caseops": use_caseops,
            },
            "bos_id": shards.BOS_ID,
            "append_eos": False,
            "shard_tokens": shard_tokens,
            "byte_sidecar": use_caseops,
            "val_docs": val.docs,
            "val_tokens": val.tokens,
            "val_shards": val.count,
            "val_bytes": val.bytes,
            "val_docs_changed_by_normalization": val.normalized,
            "train_docs": train.docs,
            "train_tokens": train.tokens,
            "train_shards": train.count,
            "train_docs_dropped_as_val": dropped,
            "docs_skipped_incomplete": skipped,
            # Last, being long: what data/verify.py checks every shard's bytes against.
            "shards": shards.checksums([p for p in tmp.iterdir() if shards.SHARD_RE.match(p.name)]),
        }
        shards.atomic_write(tmp / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        # The manifest goes first and comes back last: a folder caught half-way claims nothing.
        (out / MANIFEST).unlink(missing_ok=True)
        new = {p.name for p in tmp.iterdir()}
        for p in sorted(tmp.iterdir(), key=lambda p: p.name == MANIFEST):
            p.replace(out / p.name)
        for p in old:  # stale files of an earlier export (say, more train shards than now)
            if p.name not in new:
                p.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for key in ("val_docs", "val_tokens", "val_shards", "train_docs", "train_tokens", "train_shards"):
        log(f"{key}:{manifest[key]}")
    log(f"train_docs_dropped_as_val:{dropped}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, required=True, help="JSONL of documents, one {'text': ...} per line")
    ap.add_argument("--out", type=Path, required=True, help="output folder for shards and manifest.json")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokenizer", type=Path, help="an existing SentencePiece .model to encode with")
    src.add_argument("--train-tokenizer", type=int, metavar="VOCAB", help="train a BPE tokenizer of this vocab size")
    ap.add_argument("--caseops", action="store_true", help="CaseOps transform (reserves operators when training)")
    ap.add_argument("--val-docs", type=int, help=f"validation documents (default {NUM_VAL_DOCS}; all with a file)")
    ap.add_argument("--val-docs-file", type=Path, help="take validation documents from this JSONL instead")
    ap.add_argument("--shard-tokens", type=int, default=shards.SHARD_TOKENS)
    ap.add_argument("--overwrite", action="store_true", help="replace dataset files already in --out")
    a = ap.parse_args(argv)
    try:
        export_dataset(
            a.docs, a.out, a.tokenizer, a.train_tokenizer, a.caseops, a.val_docs, a.val_docs_file, a.overwrite,
            a.shard_tokens,
        )  # fmt: skip
    except (ExportError, tok.TokenizerError, shards.ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

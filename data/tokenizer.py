"""SentencePiece tokenizers with the challenge's settings, and the bytes each token is charged.

BPB divides bits by the UTF-8 bytes of the original text. Each token is charged the bytes of its
surface: a leading "▁" counts as one space except right after a boundary token (BOS, where
SentencePiece's decode drops it), byte-fallback pieces count one byte, control pieces none. With
CaseOps the operators count nothing (the case change they encode costs no byte of the original),
unless escaped, when they stand for their own three UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from data import caseops

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


class TokenizerError(ValueError):
    """A tokenizer file that is missing, unreadable or not laid out as the challenge expects."""


def load_tokenizer(path: Path) -> spm.SentencePieceProcessor:
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer not found: {path} (expected a SentencePiece .model file)")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{path} is not a readable SentencePiece model: {e}") from None
    ids = (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id())
    if ids != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
        raise TokenizerError(f"{path}: special ids (pad, bos, eos, unk) are {ids}, expected (0, 1, 2, 3)")
    return sp


def is_caseops(sp: spm.SentencePieceProcessor) -> bool:
    """A CaseOps model reserves the four operators as user symbols at ids 4..7."""
    return sp.vocab_size() > 7 and all(sp.id_to_piece(4 + i) == op for i, op in enumerate(caseops.OPERATORS))


def train_tokenizer(
    texts: Iterable[str], model_prefix: Path, vocab_size: int, use_caseops: bool = False, input_sentence_size: int = 0
) -> Path:
    """Trains SentencePiece BPE with the challenge's settings on (already transformed) texts."""
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(model_prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.999,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="nmt_nfkc",
        add_dummy_prefix=False,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        hard_vocab_limit=False,
        user_defined_symbols=list(caseops.OPERATORS) if use_caseops else [],
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        minloglevel=2,
    )
    return model_prefix.with_suffix(".model")


@dataclass(frozen=True)
class ByteTables:
    base_bytes: np.ndarray  # int64[vocab]: bytes of the surface without a leading space
    leading_space: np.ndarray  # bool[vocab]: the piece starts with "▁"
    boundary: np.ndarray  # bool[vocab]: control/unknown/unused pieces (BOS among them)
    esc_id: int  # CaseOps ESC id, or -1
    operator_ids: tuple[int, ...]  # CaseOps operator ids (empty without CaseOps)


def byte_tables(sp: spm.SentencePieceProcessor) -> ByteTables:
    n = sp.vocab_size()
    base = np.zeros(n, dtype=np.int64)
    space = np.zeros(n, dtype=bool)
    boundary = np.zeros(n, dtype=bool)
    ops = caseops.OPERATORS if is_caseops(sp) else ()
    for i in range(n):
        piece = sp.id_to_piece(i)
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            boundary[i] = True
        elif sp.is_byte(i):
            base[i] = 1
        elif piece not in ops:
            space[i] = piece.startswith("▁")
            base[i] = len(piece.replace("▁", " ").encode("utf-8")) - int(space[i])
    op_ids = tuple(sp.piece_to_id(op) for op in ops)
    return ByteTables(base, space, boundary, sp.piece_to_id(caseops.ESC) if ops else -1, op_ids)


def charged_bytes(ids: np.ndarray, tables: ByteTables) -> np.ndarray:
    """Original UTF-8 bytes of each token of a BOS-delimited stream (int64, aligned with ids).

    Position 0 is taken to follow a boundary, as every stream starts with BOS."""
    ids = np.asarray(ids, dtype=np.int64)
    out = tables.base_bytes[ids].copy()
    prev_boundary = np.ones(ids.size, dtype=bool)
    prev_boundary[1:] = tables.boundary[ids[:-1]]
    out += tables.leading_space[ids] & ~prev_boundary
    if tables.operator_ids:
        # An operator right after an unescaped ESC is a literal character of the original text.
        escaping = False
        for t in np.flatnonzero(np.isin(ids, tables.operator_ids)):
            if escaping and t > 0 and ids[t - 1] == tables.esc_id:
                out[t] = len(caseops.ESC.encode("utf-8"))
                escaping = False
            else:
                escaping = ids[t] == tables.esc_id
    return out


def encode_docs(sp: spm.SentencePieceProcessor, texts: list[str], use_caseops: bool) -> list[list[int]]:
    if use_caseops:
        texts = [caseops.encode(t) for t in texts]
    return sp.encode(texts, out_type=int)


def decode_doc(sp: spm.SentencePieceProcessor, ids: np.ndarray, use_caseops: bool) -> str:
    """The original text a document's tokens stand for."""
    text = sp.decode(np.asarray(ids).tolist())
    return caseops.decode(text) if use_caseops else text

"""BPB is charged on original UTF-8 bytes: the byte tables (sp1024) and the CaseOps sidecar must add up
to exactly the bytes of the original documents, over the whole validation split."""

import numpy as np

from data import shards
from data import tokenizer as tok


def val_bytes(texts):
    return sum(len(t.encode("utf-8")) for t in texts)


def test_sp1024_tables_charge_exactly_the_original_bytes(sp1024_dataset, sp1024_model, val_head_texts):
    sp = tok.load_tokenizer(sp1024_model)
    val = shards.load_shard(sp1024_dataset / "fineweb_val_000000.bin")
    charged = tok.charged_bytes(val, tok.byte_tables(sp))
    assert charged.sum() == val_bytes(val_head_texts) == 313_038
    # Document by document too, so that errors cannot cancel out.
    starts = [*np.flatnonzero(val == 1), val.size]
    per_doc = [charged[a:b].sum() for a, b in zip(starts[:-1], starts[1:])]
    assert per_doc == [len(t.encode("utf-8")) for t in val_head_texts]


def test_caseops_sidecar_charges_exactly_the_original_bytes(caseops_dataset, val_head_texts):
    side = shards.load_shard(caseops_dataset / "fineweb_val_bytes_000000.bin").astype(np.int64)
    val = shards.load_shard(caseops_dataset / "fineweb_val_000000.bin")
    assert side.size == val.size
    assert side[val == 1].sum() == 0  # BOS carries no byte
    starts = [*np.flatnonzero(val == 1), val.size]
    assert [side[a:b].sum() for a, b in zip(starts[:-1], starts[1:])] == [len(t.encode()) for t in val_head_texts]


def test_piece_lengths_would_overcharge_caseops(caseops_dataset, caseops_model):
    # Guard against the failure the sidecar exists for: counting operator pieces as 3 bytes each.
    sp = tok.load_tokenizer(caseops_model)
    val = shards.load_shard(caseops_dataset / "fineweb_val_000000.bin")
    naive = sum(len(sp.id_to_piece(int(i)).replace("▁", " ").encode()) for i in val if i > 3)
    side = shards.load_shard(caseops_dataset / "fineweb_val_bytes_000000.bin").astype(np.int64).sum()
    assert naive > side * 1.05


def test_leading_space_is_not_charged_after_bos(sp1024_model):
    sp = tok.load_tokenizer(sp1024_model)
    the = sp.piece_to_id("▁the")
    charged = tok.charged_bytes(np.array([1, the, the]), tok.byte_tables(sp))
    assert charged.tolist() == [0, 3, 4]
    assert len(sp.decode([the, the]).encode()) == 7

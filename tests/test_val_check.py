"""The validation set proven before the first step (issue 32): the shards and sidecars against manifest.json, the
bytes charged against each document's decoded original text, and the challenge's fingerprint recognised."""

import json
import re
import shutil

import numpy as np
import pytest

import train_gpt as tg
from data import caseops, shards
from tests.helpers import tiny_hp
from tests.test_ranks import torchrun
from tests.test_train import run_script


def dataset_copy(src, dst, rehash: bool = False, **files):
    """src's tokenizer, manifest and validation files copied to dst (the train shard linked), files written over
    them (name -> uint16 values, written as a shard). rehash: the manifest records the new files' sha256, as a
    dataset rebuilt around them would."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name.startswith("fineweb_train_"):
            (dst / p.name).symlink_to(p)
        else:
            shutil.copy(p, dst / p.name)
    for name, values in files.items():
        shards.write_shard(dst / f"{name}.bin", np.asarray(values))
    if rehash:
        m = json.loads((dst / "manifest.json").read_text())
        m["shards"].update(shards.checksums([dst / f"{name}.bin" for name in files]))
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def tokens_of(path) -> np.ndarray:
    return shards.load_shard(path).astype(np.int64)


def load(dataset, vocab: int = 1024) -> tg.ValData:
    hp = tiny_hp(DATA_PATH=dataset, TOKENIZER_PATH=dataset / "tokenizer.model", VOCAB_SIZE=vocab)
    return tg.load_validation(hp, tg.load_tokenizer(hp.tokenizer_path, vocab))


# ----------------------------------------------------------------------------- the two cases, on the CLI


def test_the_two_hostile_cases_are_refused_with_one_error_line(caseops_dataset, tmp_path):
    """A sidecar with +1 on every count (as written: the manifest's sha256; with a manifest rehashed to it: the
    per-document proof), and a second copy of the validation shard and sidecar in DATA_PATH: exit 2, one error
    line naming the fault, no traceback, the same line last in the log."""
    side = tokens_of(caseops_dataset / "fineweb_val_bytes_000000.bin")
    lie, listed = side + 1, json.loads((caseops_dataset / "manifest.json").read_text())["shards"]
    val, recorded = tokens_of(caseops_dataset / "fineweb_val_000000.bin"), listed["fineweb_val_bytes_000000.bin"]
    copy = {"fineweb_val_000001": val, "fineweb_val_bytes_000001": side}
    cases = {
        "plus_one": ({"fineweb_val_bytes_000000": lie}, False,
                     [r"fineweb_val_bytes_000000\.bin: sha256 [0-9a-f]{64}, but manifest\.json records "
                      + recorded["sha256"]]),
        "plus_one_rehashed": ({"fineweb_val_bytes_000000": lie}, True,
                              [r"sidecar bytes are wrong in 108 of 108 validation documents \(document 0: \d+ "
                               r"charged, \d+ in its decoded original text\)"]),
        "second_copy": (copy, False, [r"validation files not listed in its manifest\.json: fineweb_val_000001\.bin, "
                                      r"fineweb_val_bytes_000001\.bin"]),
    }  # fmt: skip
    for name, (files, rehash, patterns) in cases.items():
        data = dataset_copy(caseops_dataset, tmp_path / name, rehash, **files)
        p = run_script({"RUN_ID": name, "VOCAB_SIZE": "8192"}, data, tmp_path, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and "Traceback" not in p.stderr, (name, p.stderr[-2000:])
        assert lines[-1].startswith("error: ") and all(re.search(pat, lines[-1]) for pat in patterns), lines[-1]
        log = (tmp_path / f"{name}.txt").read_text()
        assert log.strip().splitlines()[-1] == lines[-1] and "\nstep:" not in log  # refused before anything ran


# ----------------------------------------------------------------------------- the manifest check


def test_the_manifest_check_verdicts(small_dataset, tmp_path):
    assert (load(small_dataset).val_check, load(small_dataset).val_set) == ("ok", "other")
    bare = dataset_copy(small_dataset, tmp_path / "bare")
    (bare / "manifest.json").unlink()
    assert load(bare).val_check == "unverified"  # train_gpt.py runs; tools/record.py refuses the log
    old = dataset_copy(small_dataset, tmp_path / "old")  # a manifest from before checksums
    m = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if k != "shards"}))
    assert load(old).val_check == "unverified"
    gone = dataset_copy(small_dataset, tmp_path / "gone")
    m["shards"]["fineweb_val_000001.bin"] = {"tokens": 1, "sha256": "0" * 64}
    (gone / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(tg.DataError, match=r"listed in its manifest\.json but missing: fineweb_val_000001\.bin"):
        load(gone)
    val = tokens_of(small_dataset / "fineweb_val_000000.bin")
    changed = dataset_copy(small_dataset, tmp_path / "changed", fineweb_val_000000=np.where(val == 300, 301, val))
    want = m["shards"]["fineweb_val_000000.bin"]["sha256"]
    with pytest.raises(tg.DataError, match=rf"fineweb_val_000000\.bin: sha256 [0-9a-f]{{64}}, .* records {want}"):
        load(changed)  # an in-vocabulary token changed: only the hash sees it


# ----------------------------------------------------------------------------- the per-document byte proof


def test_the_proof_refuses_byte_tables_or_a_sidecar_off_in_one_document(small_dataset, tmp_path):
    """An sp1024 sidecar equal to the tables passes; one byte moved from one document to the next (the total
    unchanged) or one byte more in one document is refused naming that document."""
    val = load(small_dataset)
    ok = dataset_copy(small_dataset, tmp_path / "ok", True, fineweb_val_bytes_000000=val.target_bytes)
    assert load(ok).byte_source == "sidecar" and load(ok).val_check == "ok"
    starts = np.flatnonzero(val.tokens == tg.BOS_ID)
    moved = val.target_bytes.copy()
    moved[starts[2] + 1] += 1
    moved[starts[3] + 1] -= 1
    assert moved[1:].sum() == val.target_bytes[1:].sum() and moved.min() >= 0
    bad = dataset_copy(small_dataset, tmp_path / "moved", True, fineweb_val_bytes_000000=moved)
    with pytest.raises(tg.DataError, match=r"sidecar bytes are wrong in 2 of 8 validation documents \(document 2: "):
        load(bad)
    tg.prove_bytes(val.tokens, val.target_bytes, tg.load_tokenizer(str(small_dataset / "tokenizer.model"), 1024), "x")


def test_each_rank_proves_every_world_th_document_and_all_stop(small_dataset, monkeypatch):
    """Rank r of 2 decodes documents r, r + 2, ...; a lie in document 1 (rank 1's) stops rank 0 too, through the
    all-reduced count, with the count and without an example it never saw."""
    val, sp = load(small_dataset), tg.load_tokenizer(str(small_dataset / "tokenizer.model"), 1024)
    lie = val.target_bytes.copy()
    lie[np.flatnonzero(val.tokens == tg.BOS_ID)[1] + 1] += 1
    decoded, real = [], tg.original_bytes
    monkeypatch.setattr(tg, "original_bytes", lambda sp, ids, c: decoded.append(len(ids)) or real(sp, ids, c))
    monkeypatch.setattr(tg.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(tg.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(tg.dist, "get_backend", lambda: "gloo")
    lengths = list(np.diff([*np.flatnonzero(val.tokens == tg.BOS_ID), len(val.tokens)]) - 1)
    for rank, message in ((0, r"wrong in 1 of 8 validation documents$"), (1, r"wrong in 1 of 8 .*\(document 1: ")):
        decoded.clear()
        monkeypatch.setattr(tg.dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(tg.dist, "all_reduce", lambda t: t.fill_(1))  # the other rank's count added: 1 in all
        with pytest.raises(tg.DataError, match=message):
            tg.prove_bytes(val.tokens, lie, sp, "sidecar")
        assert decoded == lengths[rank::2]


def test_two_ranks_both_stop_on_a_lie_only_one_of_them_proves(small_dataset, tmp_path):
    """Under torchrun (2 gloo ranks): a sidecar one byte over in document 1 (rank 1's) ends the run before anything
    trains, with one error line, the count all-reduced; no rank waits for the other."""
    val = load(small_dataset)
    lie = val.target_bytes.copy()
    lie[np.flatnonzero(val.tokens == tg.BOS_ID)[1] + 1] += 1
    data = dataset_copy(small_dataset, tmp_path / "data", True, fineweb_val_bytes_000000=lie)
    p = torchrun(2, {}, data, tmp_path / "run", timeout=180)
    assert p.returncode != 0 and 'train_gpt.py", line' not in p.stderr, p.stderr[-3000:]  # (torchrun's own aside)
    log = (tmp_path / "run" / "run.txt").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "\nstep:" not in log, errors
    assert re.match(r"error: rank [01]: sidecar bytes are wrong in 1 of 8 validation documents", errors[0]), errors


def test_original_bytes_is_the_utf8_length_of_the_caseops_inverse(caseops_dataset, caseops_model):
    """train_gpt.py counts the inverse's bytes without data/caseops.py: on every sample document and on texts with
    every operator, escaped operators and non-ASCII letters, it equals len(caseops.decode(text).encode())."""
    sp = tg.load_tokenizer(str(caseops_model), 8192)
    tokens = tokens_of(caseops_dataset / "fineweb_val_000000.bin")
    starts = [*np.flatnonzero(tokens == 1), len(tokens)]
    texts = [caseops.encode(t) for t in ["The NASA Launch in iPhone OpenAI.", "\ue001 escaped \ue004\ue002 Ärger",
                                          "ÉCOLE Straße McDonald's XML-RPC", "İstanbul ǅemal ﬁne"]]  # fmt: skip
    docs = [tokens[a + 1 : b] for a, b in zip(starts[:-1], starts[1:])] + [np.array(sp.encode(t)) for t in texts]
    for ids in docs:
        assert tg.original_bytes(sp, ids, True) == len(caseops.decode(sp.decode(ids.tolist())).encode("utf-8"))


# ----------------------------------------------------------------------------- the challenge's fingerprint


def test_val_set_is_official_only_for_the_challenges_counts(caseops_model, sp1024_model):
    """50,000 documents and the tokens of the challenge's set: CaseOps' whole stream, 47,853,343 tokens (the records
    log 47,851,520, cut to a multiple of 2048 after the first); sp1024 any stream that cut takes to 63,779,840."""
    caseops_sp, sp1024 = tg.load_tokenizer(str(caseops_model), 8192), tg.load_tokenizer(str(sp1024_model), 1024)

    def stream(n_tokens: int, docs: int = 50_000) -> np.ndarray:
        t = np.zeros(n_tokens, np.uint8)
        t[:: n_tokens // docs][:docs] = tg.BOS_ID
        return t

    assert tg.val_set(stream(47_853_343), caseops_sp) == "official"
    for n in (47_851_520, 47_851_521, 47_853_342, 47_853_344):  # the records' count, and one token off the whole
        assert tg.val_set(stream(n), caseops_sp) == "other"
    assert tg.val_set(stream(47_853_343, docs=49_999), caseops_sp) == "other"
    assert tg.val_set(stream(47_853_343), sp1024) == "other"  # CaseOps' counts, another tokenizer
    assert [tg.val_set(stream(n), sp1024) for n in (63_779_840, 63_779_841, 63_780_864, 63_780_865)] == [
        "other", "official", "official", "other"]  # fmt: skip

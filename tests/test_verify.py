import hashlib
import json
import shutil

import numpy as np
import pytest

from data import shards, verify
from tests.conftest import shared_file


@pytest.fixture
def copy_of(tmp_path):
    def make(src):
        dst = tmp_path / "ds"
        shutil.copytree(src, dst)
        return dst

    return make


def run_cli(args, capsys):
    rc = verify.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("name", ["sp1024_dataset", "caseops_dataset"])
def test_sample_datasets_pass_with_fingerprints(request, name, capsys):
    rc, out, _ = run_cli([request.getfixturevalue(name)], capsys)
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert rc == 0 and lines["verify"] == "ok"
    assert lines["val_docs"] == "108" and lines["val_bytes"] == "313038" and lines["shared_docs"] == "0"
    assert lines["train_docs"] == "5000" and lines["train_shards"] == "1"
    assert lines["byte_accounting"] == ("sidecar" if name == "caseops_dataset" else "tables")
    assert lines["checksums"] == "ok"


def rewrite(path, fn):
    tokens = shards.load_shard(path).astype(np.int64)
    shards.write_shard(path, fn(tokens))


def test_wrong_magic(sp1024_dataset, copy_of, capsys):
    ds = copy_of(sp1024_dataset)
    path = ds / "fineweb_train_000000.bin"
    data = bytearray(path.read_bytes())
    data[0:4] = (12345).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "magic 12345" in err and "fineweb_train_000000.bin" in err


def test_truncated_shard(sp1024_dataset, copy_of, capsys):
    ds = copy_of(sp1024_dataset)
    path = ds / "fineweb_val_000000.bin"
    path.write_bytes(path.read_bytes()[:-100])
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "truncated" in err and "fineweb_val_000000.bin" in err


def test_id_out_of_vocab(sp1024_dataset, copy_of, capsys):
    ds = copy_of(sp1024_dataset)
    rewrite(ds / "fineweb_train_000000.bin", lambda t: np.where(np.arange(t.size) == 500, 1024, t))
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "token id 1024 at position 500 is not below the vocab size 1024" in err


def test_document_in_both_train_and_val(sp1024_dataset, copy_of, capsys):
    ds = copy_of(sp1024_dataset)
    val = shards.load_shard(ds / "fineweb_val_000000.bin").astype(np.int64)
    starts = np.flatnonzero(val == 1)
    leaked = val[starts[3] : starts[4]]  # the fourth validation document, with its BOS
    rewrite(ds / "fineweb_train_000000.bin", lambda t: np.concatenate([t, leaked]))
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["train_docs"] += 1
    (ds / "manifest.json").write_text(json.dumps(manifest))
    rc, out, err = run_cli([ds], capsys)
    assert rc == 1 and "shared_docs:1" in out and "1 training documents are also validation documents" in err


def test_fewer_val_docs_than_declared(sp1024_dataset, copy_of, capsys):
    ds = copy_of(sp1024_dataset)
    val = shards.load_shard(ds / "fineweb_val_000000.bin").astype(np.int64)
    rewrite(ds / "fineweb_val_000000.bin", lambda t: t[: np.flatnonzero(val == 1)[100]])
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "the val split holds 100 documents but 108 are declared" in err
    rc, _, err = run_cli([ds, "--val-docs", "100"], capsys)  # an explicit declaration wins
    assert "documents but" not in err


def test_wrong_sidecar_is_caught(caseops_dataset, copy_of, capsys):
    ds = copy_of(caseops_dataset)
    rewrite(ds / "fineweb_val_bytes_000000.bin", lambda t: t + (np.arange(t.size) == 10))
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "byte accounting is off in 1 val documents" in err


def drop_checksums(ds):
    manifest = json.loads((ds / "manifest.json").read_text())
    del manifest["shards"]
    (ds / "manifest.json").write_text(json.dumps(manifest))


def test_missing_sidecar_for_caseops(caseops_dataset, copy_of, capsys):
    ds = copy_of(caseops_dataset)
    (ds / "fineweb_val_bytes_000000.bin").unlink()
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "lacks fineweb_val_bytes_000000.bin, which manifest.json lists" in err
    drop_checksums(ds)  # without the list, the CaseOps check still catches it
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "sidecar" in err


def test_one_in_vocabulary_token_changed_fails_on_its_checksum(sp1024_dataset, copy_of, capsys):
    """The change keeps every structural fact (ids in range, BOS where it was, document counts): only the
    recorded sha256 can tell this shard from the one that was written."""
    ds = copy_of(sp1024_dataset)
    path = ds / "fineweb_train_000000.bin"
    want = json.loads((ds / "manifest.json").read_text())["shards"][path.name]["sha256"]
    tokens = shards.load_shard(path).astype(np.int64)
    assert tokens[500] not in (1, 5)  # neither the old nor the new id is BOS
    rewrite(path, lambda t: np.where(np.arange(t.size) == 500, 5, t))
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and f"{path}: sha256 is {found[:16]}..., manifest.json records {want[:16]}..." in err
    drop_checksums(ds)
    rc, out, _ = run_cli([ds], capsys)
    assert rc == 0 and "checksums:none_recorded" in out.splitlines()  # an older manifest: said, not failed


def test_a_listed_shard_that_is_missing_fails(sp1024_dataset, copy_of, capsys):
    ds = copy_of(sp1024_dataset)
    (ds / "fineweb_train_000000.bin").unlink()
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "lacks fineweb_train_000000.bin, which manifest.json lists (missing shards)" in err


def test_a_shard_the_manifest_does_not_list_fails(sp1024_dataset, copy_of, capsys):
    ds = copy_of(sp1024_dataset)
    shutil.copy(ds / "fineweb_train_000000.bin", ds / "fineweb_train_000001.bin")
    rc, _, err = run_cli([ds], capsys)
    assert rc == 1 and "holds fineweb_train_000001.bin, which manifest.json does not list" in err


def test_tokenizer_that_does_not_match_the_data(sp1024_dataset, caseops_model, copy_of, capsys):
    rc, _, err = run_cli([sp1024_dataset, "--tokenizer", shared_file("fineweb_8192_bpe.model")], capsys)
    assert rc == 1 and "does not match the data" in err
    # Without a manifest to compare with, the CaseOps model still fails: it needs a sidecar.
    ds = copy_of(sp1024_dataset)
    (ds / "manifest.json").unlink()
    rc, _, err = run_cli([ds, "--tokenizer", caseops_model], capsys)
    assert rc == 1 and "sidecar" in err


def test_missing_folder(tmp_path, capsys):
    rc, _, err = run_cli([tmp_path / "nope"], capsys)
    assert rc == 1 and "dataset folder not found" in err

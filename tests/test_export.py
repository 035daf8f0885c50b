import hashlib
import json

import numpy as np
import pytest

from data import caseops, export, shards, verify
from data import tokenizer as tok
from tests.conftest import shared_file


def quiet(_):
    pass


def test_exporter_reproduces_the_official_val_shard(sp1024_dataset):
    ours = shards.load_shard(sp1024_dataset / "fineweb_val_000000.bin")
    official = shards.load_shard(shared_file("fineweb_val_head_sp1024.bin"))
    # The official head holds 109 documents, the last cut off; ours holds the 108 complete ones.
    assert ours.size == 130_092 and (ours == 1).sum() == 108
    assert np.array_equal(ours, official[: ours.size]) and official[ours.size] == 1


def test_manifest_records_what_was_built(sp1024_dataset):
    m = json.loads((sp1024_dataset / "manifest.json").read_text())
    assert m["val_docs"] == 108 and m["train_docs"] == 5000 and m["val_tokens"] == 130_092
    assert m["tokenizer"]["sha256"] == "4f5e8adb109c66b4886963bc75a7befd73bda36d27fd7102df8e9e66503b0e2a"
    assert m["docs"]["sha256"] == "dd8f0ded4231e7ab1e2c3ec2f85521ff83c12bc2ac544ca225f93434264ab994"
    assert m["docs_skipped_incomplete"] == {str(shared_file("fineweb_val_head.jsonl")): 1}
    assert m["train_tokens"] == shards.read_header(sp1024_dataset / "fineweb_train_000000.bin")


def test_first_docs_are_val_and_train_starts_right_after(tmp_path, small_docs, sp1024_model):
    texts = [json.loads(line)["text"] for line in small_docs.read_text().splitlines()]
    m = export.export_dataset(small_docs, tmp_path / "o", sp1024_model, val_docs=100, shard_tokens=20_000, log=quiet)
    sp = tok.load_tokenizer(sp1024_model)
    val = list(shards.iter_docs(shards.list_shards(tmp_path / "o", "val")))
    train = list(shards.iter_docs(shards.list_shards(tmp_path / "o", "train")))
    assert len(val) == m["val_docs"] == 100 and len(train) == m["train_docs"] == 200
    assert [sp.decode(d.tolist()) for d in val] == [sp.decode(sp.encode(t)) for t in texts[:100]]
    assert sp.decode(train[0].tolist()) == sp.decode(sp.encode(texts[100]))
    # Small shards: documents continue across shard boundaries, every shard is full but the last.
    sizes = [shards.read_header(p) for p in shards.list_shards(tmp_path / "o", "train")]
    assert m["train_shards"] == len(sizes) > 1 and set(sizes[:-1]) == {20_000}


def shards_on_disk(folder):
    """What the manifest must say, computed here from the files: name -> header token count, sha256 of the bytes."""
    files = [p for p in folder.iterdir() if shards.SHARD_RE.match(p.name)]
    return {
        p.name: {"tokens": shards.read_header(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files
    }


def test_manifest_lists_every_shard_with_its_sha256(tmp_path, small_docs, sp1024_model, caseops_dataset):
    m = export.export_dataset(small_docs, tmp_path / "o", sp1024_model, val_docs=100, shard_tokens=20_000, log=quiet)
    assert m["shards"] == shards_on_disk(tmp_path / "o")
    assert m == json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert sum(n.startswith("fineweb_train_") for n in m["shards"]) == m["train_shards"] > 1
    caseops_manifest = json.loads((caseops_dataset / "manifest.json").read_text())
    assert caseops_manifest["shards"] == shards_on_disk(caseops_dataset)
    assert "fineweb_val_bytes_000000.bin" in caseops_manifest["shards"]  # the byte sidecars too


def test_fewer_docs_than_asked_is_refused(tmp_path, small_docs, sp1024_model):
    with pytest.raises(export.ExportError, match="asked for 50000 validation documents but .* only 300"):
        export.export_dataset(small_docs, tmp_path / "o", sp1024_model, log=quiet)  # the default is 50,000
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_existing_shards_are_never_overwritten_silently(tmp_path, small_docs, sp1024_model):
    out = tmp_path / "o"
    export.export_dataset(small_docs, out, sp1024_model, val_docs=10, shard_tokens=50_000, log=quiet)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(export.ExportError, match="--overwrite"):
        export.export_dataset(small_docs, out, sp1024_model, val_docs=20, log=quiet)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    m = export.export_dataset(small_docs, out, sp1024_model, val_docs=20, overwrite=True, log=quiet)
    assert m["train_shards"] == 1 and len(shards.list_shards(out, "train")) == 1  # stale shards removed


def test_train_doc_equal_to_a_val_doc_is_dropped(tmp_path, small_docs, sp1024_model):
    lines = small_docs.read_text().splitlines()
    val_file = tmp_path / "val.jsonl"
    val_file.write_text("\n".join(lines[:5]) + "\n")
    m = export.export_dataset(small_docs, tmp_path / "o", sp1024_model, val_docs_file=val_file, log=quiet)
    assert m["val_docs"] == 5 and m["train_docs"] == 295 and m["train_docs_dropped_as_val"] == 5


def test_bad_json_line_names_file_and_line(tmp_path, sp1024_model):
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(export.ExportError, match=r"d.jsonl:2: .*\"text\""):
        export.export_dataset(docs, tmp_path / "o", sp1024_model, val_docs=1, log=quiet)


def test_trained_tokenizer_has_the_challenge_settings(tmp_path, small_docs):
    m = export.export_dataset(small_docs, tmp_path / "o", vocab_size=512, use_caseops=True, val_docs=20, log=quiet)
    sp = tok.load_tokenizer(tmp_path / "o" / "tokenizer.model")
    assert sp.vocab_size() == 512 and m["tokenizer"]["caseops"] and m["byte_sidecar"]
    assert [sp.id_to_piece(i) for i in range(8)] == ["<pad>", "<s>", "</s>", "<unk>", *caseops.OPERATORS]
    assert sp.id_to_piece(8) == "<0x00>"  # byte fallback follows the reserved ids
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]  # split digits
    assert not sp.id_to_piece(sp.encode("hello")[0]).startswith("▁")  # no dummy prefix
    assert sp.encode("ﬁ") == sp.encode("fi")  # nmt_nfkc
    assert (tmp_path / "o" / "fineweb_val_bytes_000000.bin").is_file()


def test_tokenizer_is_trained_on_training_documents_only(tmp_path, small_docs):
    marker = "zqxjv" * 40  # a word that would surely become pieces if the tokenizer saw it
    val_file = tmp_path / "val.jsonl"
    val_file.write_text("".join(json.dumps({"text": f"{marker} {i}"}) + "\n" for i in range(200)))
    export.export_dataset(small_docs, tmp_path / "o", vocab_size=400, val_docs_file=val_file, log=quiet)
    sp = tok.load_tokenizer(tmp_path / "o" / "tokenizer.model")
    assert not any("zqx" in sp.id_to_piece(i) for i in range(sp.vocab_size()))


def test_cli_reports_errors_in_one_line(tmp_path, small_docs, sp1024_model, capsys):
    rc = export.main(["--docs", str(small_docs), "--out", str(tmp_path / "o"), "--tokenizer", str(sp1024_model)])
    assert rc == 1 and "asked for 50000 validation documents" in capsys.readouterr().err


def test_normalised_val_docs_are_counted_and_bytes_follow_the_decoded_text(tmp_path, small_docs, sp1024_model):
    val_file = tmp_path / "val.jsonl"
    texts = ["plain text", "a ﬁne  double   space", "  leading and trailing  ", "Ｆull width"]
    val_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    m = export.export_dataset(small_docs, tmp_path / "o", sp1024_model, val_docs_file=val_file, log=quiet)
    assert m["val_docs_changed_by_normalization"] == 3
    facts = verify.verify(tmp_path / "o", log=quiet)
    assert m["val_bytes"] == facts["val_bytes"] < sum(len(t.encode()) for t in texts)

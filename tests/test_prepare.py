import json

import pytest

from data import download, prepare
from tests.conftest import SHARED


def test_builds_from_the_offline_sample_then_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PG_SHARED_DATA", str(SHARED))
    logged = []
    out = prepare.prepare("sp1024", tmp_path / "datasets", log=logged.append)
    assert out == tmp_path / "datasets" / "sample_sp1024"
    assert "sp1024:verify:ok" in logged and "sp1024:val_docs:108" in logged
    logged.clear()
    prepare.prepare("sp1024", tmp_path / "datasets", log=logged.append)
    assert logged[0] == f"prepare:up_to_date {out}"
    # A changed shard is not up to date: the sample is rebuilt rather than trained on.
    inputs = [
        SHARED / "fineweb_train_sample.jsonl",
        SHARED / "fineweb_val_head.jsonl",
        SHARED / "fineweb_1024_bpe.model",
    ]
    train = out / "fineweb_train_000000.bin"
    kept = train.read_bytes()
    train.write_bytes(kept[:-2] + bytes([kept[-2] ^ 1, kept[-1]]))
    assert "fineweb_train_000000.bin: sha256 is" in prepare.stale_reason(out, *inputs)
    train.write_bytes(kept)
    assert prepare.stale_reason(out, *inputs) is None
    # An export from before checksums is rebuilt, so that its shards get them.
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "shards"}))
    logged.clear()
    prepare.prepare("sp1024", tmp_path / "datasets", log=logged.append)
    assert logged[0] == f"prepare:build {out} (manifest.json records no shard checksums)"
    assert json.loads((out / "manifest.json").read_text()) == manifest and "sp1024:checksums:ok" in logged


def test_without_sample_or_network_it_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PG_SHARED_DATA", str(tmp_path / "nowhere"))

    def offline(self):
        raise download.DownloadError("cannot list hub dataset willdepueoai/parameter-golf: ConnectionError")

    monkeypatch.setattr(download.HubSource, "list_files", offline)
    with pytest.raises(download.DownloadError) as e:
        prepare.prepare("caseops", tmp_path / "datasets", log=lambda _: None)
    msg = str(e.value)
    assert "fineweb_val_head.jsonl" in msg and "fineweb_8192_bpe_caseops_v1.model" in msg
    assert "PG_SHARED_DATA" in msg and "hub is not reachable" in msg


def test_with_network_it_takes_the_official_val_split_and_one_train_shard(tmp_path, monkeypatch):
    monkeypatch.setenv("PG_SHARED_DATA", str(tmp_path / "nowhere"))
    asked = []

    def fake_download(variant, train_shards, out, log):
        asked.append((variant, train_shards, out))
        raise download.DownloadError("stop here")

    monkeypatch.setattr(download, "download", fake_download)
    with pytest.raises(download.DownloadError):
        prepare.prepare("sp1024", tmp_path / "data" / "datasets", log=lambda _: None)
    assert asked == [("sp1024", 1, tmp_path / "data")]

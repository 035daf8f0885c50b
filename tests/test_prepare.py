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

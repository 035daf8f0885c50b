import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data import download, shards, verify

V = download.VARIANTS["sp1024"]


@pytest.fixture
def mirror(tmp_path, sp1024_model):
    """A folder laid out like the hub repository: 2 val shards, 3 train shards, the tokenizer."""
    root = tmp_path / "hub"
    ds = root / V.root / "datasets" / V.dataset
    ds.mkdir(parents=True)
    for kind, n in [("val", 2), ("train", 3)]:
        for i in range(n):
            first = (10 if kind == "val" else 100) + i  # no train document is a val one: verify passes
            shards.write_shard(ds / shards.shard_name(kind, i), np.array([1, first, 20, 30]))
    (root / V.root / "tokenizers").mkdir()
    shutil.copy(sp1024_model, root / V.root / "tokenizers" / V.tokenizer)
    (root / V.root / "manifest.json").write_text("{}")
    return root


def names(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_full_val_and_a_prefix_of_train(tmp_path, mirror):
    out = tmp_path / "data"
    ds = download.download("sp1024", 2, out, download.LocalSource(mirror), log=lambda _: None)
    assert ds == out / "datasets" / V.dataset
    assert names(ds) == [
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
        "fineweb_val_000000.bin",
        "fineweb_val_000001.bin",
        "manifest.json",
    ]
    assert names(out / "tokenizers") == [V.tokenizer]


def test_a_complete_download_writes_a_manifest_that_verify_checks(tmp_path, mirror):
    out = tmp_path / "data"
    ds = download.download("sp1024", 2, out, download.LocalSource(mirror), log=lambda _: None)
    m = json.loads((ds / "manifest.json").read_text())
    tokenizer = out / "tokenizers" / V.tokenizer
    assert (ds / m["tokenizer"]["file"]).resolve() == tokenizer.resolve()
    assert m["tokenizer"]["sha256"] == hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    assert m["format"] == "parameter-golf-shards/1" and m["tokenizer"]["vocab_size"] == 1024
    files = [p for p in ds.iterdir() if shards.SHARD_RE.match(p.name)]
    assert m["shards"] == {p.name: {"tokens": 4, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files}
    assert m["val_tokens"] == 8 and m["train_shards"] == 2
    # verify finds the tokenizer through the manifest and checks the shards' bytes against it
    assert verify.verify(ds, log=lambda _: None)["checksums"] == "ok"
    # 101 -> 102: the header, the ids and the documents stay valid, only the bytes differ
    shards.write_shard(ds / "fineweb_train_000001.bin", np.array([1, 102, 20, 30]))
    with pytest.raises(verify.VerifyError, match="fineweb_train_000001.bin: sha256 is .* manifest.json records"):
        verify.verify(ds, log=lambda _: None)


def test_an_interrupted_download_leaves_no_manifest(tmp_path, mirror):
    src = download.LocalSource(mirror)
    ds = download.download("sp1024", 1, tmp_path, src, log=lambda _: None)
    assert (ds / "manifest.json").is_file()

    def fail(remote, dest):
        raise download.DownloadError(f"cannot download {remote}")

    src.fetch = fail
    with pytest.raises(download.DownloadError):
        download.download("sp1024", 2, tmp_path, src, log=lambda _: None)
    assert not (ds / "manifest.json").exists()  # the old one no longer describes the folder


def test_too_many_train_shards(tmp_path, mirror):
    with pytest.raises(download.DownloadError, match="asked for 4 train shards but fineweb10B_sp1024 has 3"):
        download.download("sp1024", 4, tmp_path, download.LocalSource(mirror))


def test_corrupt_remote_file_is_refused_and_not_kept(tmp_path, mirror):
    bad = mirror / V.root / "datasets" / V.dataset / "fineweb_train_000001.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(download.DownloadError, match="fineweb_train_000001.bin but it is not valid"):
        download.download("sp1024", 3, tmp_path / "d", download.LocalSource(mirror))
    assert not (tmp_path / "d" / "datasets" / V.dataset / "fineweb_train_000001.bin").exists()


def test_resume_keeps_good_files_and_refetches_bad_ones(tmp_path, mirror):
    src = download.LocalSource(mirror)
    ds = download.download("sp1024", 1, tmp_path, src, log=lambda _: None)
    (ds / "fineweb_val_000001.bin").write_bytes(b"partial")
    fetched, logged = [], []
    real_fetch = src.fetch
    src.fetch = lambda remote, dest: (fetched.append(Path(remote).name), real_fetch(remote, dest))
    download.download("sp1024", 2, tmp_path, src, log=logged.append)
    assert fetched == ["fineweb_val_000001.bin", "fineweb_train_000001.bin"]
    assert any("refetch fineweb_val_000001.bin" in line for line in logged)
    assert shards.read_header(ds / "fineweb_val_000001.bin") == 4


def test_caseops_needs_its_byte_sidecars(tmp_path, mirror):
    with pytest.raises(download.DownloadError, match="lacks"):
        download.download("caseops", 0, tmp_path, download.LocalSource(mirror))


def test_hub_source_asks_huggingface_hub_for_the_dataset_repo(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, *, repo_type, local_dir):
        calls.append((repo_id, filename, repo_type))
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        shards.write_shard(path, np.array([1, 2]))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    dest = tmp_path / "fineweb_val_000000.bin"
    download.HubSource("willdepueoai/parameter-golf").fetch("datasets/datasets/x/fineweb_val_000000.bin", dest)
    assert calls == [("willdepueoai/parameter-golf", "datasets/datasets/x/fineweb_val_000000.bin", "dataset")]
    assert shards.read_header(dest) == 2


def test_hub_errors_become_one_clear_message(monkeypatch):
    import huggingface_hub

    def offline(self, *a, **k):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", offline)
    with pytest.raises(download.DownloadError, match="cannot list hub dataset .*no route to host"):
        download.HubSource("willdepueoai/parameter-golf").list_files()

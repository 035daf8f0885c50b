import numpy as np
import pytest

from data import shards


def test_roundtrip_and_header(tmp_path):
    tokens = np.array([1, 5, 65535, 0, 1, 7], dtype=np.uint16)
    path = tmp_path / shards.shard_name("val", 0)
    shards.write_shard(path, tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [20240520, 1, 6] and not header[3:].any()
    assert path.stat().st_size == 1024 + 2 * 6
    assert np.array_equal(shards.load_shard(path), tokens)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda b: b[:1030], "truncated"),
        (lambda b: b[:500], "shorter than"),
        (lambda b: b"\x00\x00\x00\x00" + b[4:], "magic"),
        (lambda b: b[:4] + (2).to_bytes(4, "little") + b[8:], "version"),
        (lambda b: b + b"\x00\x00", "truncated or padded"),
    ],
)
def test_bad_shards_are_refused_by_name(tmp_path, corrupt, message):
    path = tmp_path / "fineweb_train_000000.bin"
    shards.write_shard(path, np.arange(10))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(shards.ShardError, match=message) as e:
        shards.load_shard(path)
    assert str(path) in str(e.value)


def test_values_outside_uint16_refused_and_nothing_left_behind(tmp_path):
    with pytest.raises(shards.ShardError, match="uint16"):
        shards.write_shard(tmp_path / "x.bin", np.array([1, 70000]))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        shards.atomic_write(path, boom)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_iter_docs_joins_documents_across_shards(tmp_path):
    stream = np.array([1, 10, 11, 1, 12, 13, 14, 15, 1, 1, 16])  # docs: [10,11] [12..15] [] [16]
    paths = []
    for i, part in enumerate(np.split(stream, [5, 9])):  # cut inside the second document
        paths.append(tmp_path / shards.shard_name("train", i))
        shards.write_shard(paths[-1], part)
    docs = [d.tolist() for d in shards.iter_docs(paths)]
    assert docs == [[10, 11], [12, 13, 14, 15], [], [16]]
    assert shards.list_shards(tmp_path, "train") == paths


def test_split_must_start_with_bos(tmp_path):
    path = tmp_path / shards.shard_name("val", 0)
    shards.write_shard(path, np.array([5, 1, 6]))
    with pytest.raises(shards.ShardError, match="must start with BOS"):
        list(shards.iter_docs([path]))


def test_list_shards_keeps_val_and_sidecars_apart(tmp_path):
    for name in ["fineweb_val_000001.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "other.bin"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in shards.list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert [p.name for p in shards.list_shards(tmp_path, "val_bytes")] == ["fineweb_val_bytes_000000.bin"]

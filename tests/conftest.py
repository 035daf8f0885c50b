"""Shared fixtures: the real offline data (../shared/data, or PG_SHARED_DATA) and datasets built from it."""

import json
import os
from pathlib import Path

import pytest

from data import export

SHARED = Path(os.environ.get("PG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_file(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.fail(f"real data missing: {path} (tests read ../shared/data, or set PG_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def val_head_texts() -> list[str]:
    """The 108 complete documents of the official validation head."""
    docs = [json.loads(line) for line in shared_file("fineweb_val_head.jsonl").open(encoding="utf-8")]
    return [d["text"] for d in docs if d.get("complete", True)]


@pytest.fixture(scope="session")
def sp1024_model() -> Path:
    return shared_file("fineweb_1024_bpe.model")


@pytest.fixture(scope="session")
def caseops_model() -> Path:
    return shared_file("fineweb_8192_bpe_caseops_v1.model")


def _export(tmp_path_factory, name: str, model: Path) -> Path:
    out = tmp_path_factory.mktemp(name)
    export.export_dataset(
        shared_file("fineweb_train_sample.jsonl"),
        out,
        tokenizer=model,
        val_docs_file=shared_file("fineweb_val_head.jsonl"),
        overwrite=True,
        log=lambda _: None,
    )
    return out


@pytest.fixture(scope="session")
def sp1024_dataset(tmp_path_factory, sp1024_model) -> Path:
    """The sample dataset for sp1024 exactly as data/prepare.py builds it (built once per session)."""
    return _export(tmp_path_factory, "sample_sp1024", sp1024_model)


@pytest.fixture(scope="session")
def caseops_dataset(tmp_path_factory, caseops_model) -> Path:
    return _export(tmp_path_factory, "sample_caseops", caseops_model)


@pytest.fixture
def small_docs(tmp_path) -> Path:
    """A JSONL of 300 real training documents (fast exports)."""
    lines = shared_file("fineweb_train_sample.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, sp1024_model) -> Path:
    """8 validation and 292 training documents of the real sample, sp1024 (fast to evaluate)."""
    lines = shared_file("fineweb_train_sample.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    docs = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    docs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("small_sp1024")
    export.export_dataset(docs, out, tokenizer=sp1024_model, val_docs=8, overwrite=True, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_run(small_dataset, tmp_path_factory) -> Path:
    """One real run of train_gpt.py (TINY, 3 steps, chunked evaluation) in its own folder: tiny_run / "run.txt" and
    "run.ptz". Shared by the tests that only read a finished run's log or artifact: read it, never write there."""
    import subprocess
    import sys

    from tests.helpers import TINY

    out = tmp_path_factory.mktemp("tiny_run")
    data = {"DATA_PATH": str(small_dataset), "TOKENIZER_PATH": str(small_dataset / "tokenizer.model")}
    env = {**os.environ, **TINY, **data, "LOG_DIR": str(out), "RUN_ID": "run", "EVAL_STRIDE": "0", "ITERATIONS": "3"}
    script = Path(__file__).resolve().parents[1] / "train_gpt.py"
    p = subprocess.run([sys.executable, str(script)], env=env, cwd=out, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return out

"""The newcomer's first command (tools/start.py) from a fresh copy of the repository, and the presets."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import train_gpt as tg
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]


def fresh_clone(tmp_path: Path) -> Path:
    """The files of this checkout that a commit would hold (what a clone has) in tmp_path/repo, with the shared
    data beside it as ../shared, the layout the README assumes."""
    repo = tmp_path / "repo"
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]  # tracked, and new files
    files = subprocess.run(listed, cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_file("SOURCES.md").parent)
    return repo


def test_the_first_command_runs_the_main_job_end_to_end_from_a_fresh_clone(tmp_path):
    """python3 tools/start.py at the smoke preset: prepares the sample (absent in a clone), trains, exports and
    scores, and prints where the log, the artifact and the score are; the log shows the preset and every value."""
    repo = fresh_clone(tmp_path)
    assert not (repo / "data" / "datasets").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("PG_SHARED_DATA", "RUN_ID", "LOG_DIR")}
    env["MAX_WALLCLOCK_SECONDS"] = "3"  # the preset's 10 s of training prove nothing more here
    p = subprocess.run([sys.executable, "tools/start.py", "--preset", "smoke", "--no-install"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=400)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    printed = dict(re.findall(r"^start: (log|artifact|score): (.+)$", p.stdout, re.M))
    assert set(printed) == {"log", "artifact", "score"}, p.stdout[-2000:]
    log = Path(printed["log"]).read_text()
    assert Path(printed["artifact"]).is_file() and Path(printed["log"]).parent == repo / "logs"
    assert re.fullmatch(r"roundtrip val_bpb \d+\.\d+", printed["score"])
    assert "hparam PRESET=smoke" in log and "hparam NUM_LAYERS=4" in log and "hparam MODEL_DIM=64" in log
    assert f"val_bpb:{printed['score'].split()[-1]}" in log


@pytest.mark.parametrize("preset,variant", [("cpu", "caseops"), ("smoke", "sp1024"), ("naive", "sp1024")])
def test_the_first_command_prepares_the_sample_its_preset_reads(preset, variant, monkeypatch, tmp_path):
    """PRESET=cpu reads the CaseOps sp8192 sample, smoke and naive the sp1024 one: start.py builds that one when
    its manifest is missing, and nothing when it is there or when DATA_PATH points elsewhere."""
    from tools import start

    ran = []
    monkeypatch.setattr(start, "sh", lambda *cmd, env=None: ran.append(cmd[1:]))
    monkeypatch.setattr(start, "ROOT", tmp_path)
    monkeypatch.delenv("DATA_PATH", raising=False)
    start.prepare_sample(preset)
    assert ran == [("data/prepare.py", "--variant", variant)]
    sample = Path(tg.Hyperparameters({"PRESET": preset}).data_path).name
    (tmp_path / "data" / "datasets" / sample).mkdir(parents=True)
    (tmp_path / "data" / "datasets" / sample / "manifest.json").write_text("{}")
    monkeypatch.setenv("DATA_PATH", str(tmp_path / "elsewhere"))
    start.prepare_sample(preset)
    monkeypatch.delenv("DATA_PATH")
    start.prepare_sample(preset)
    assert len(ran) == 1


@pytest.mark.parametrize("preset", tg.PRESETS)
def test_each_preset_is_a_set_of_defaults_that_any_variable_overrides(preset):
    hp = tg.Hyperparameters({"PRESET": preset})
    table = {name: (typ, allowed) for name, typ, _, allowed, _ in tg.HPARAMS}
    for name, value in tg.PRESETS[preset].items():
        assert getattr(hp, name.lower()) == tg._parse(name, *table[name][:1], value, table[name][1]), name
    assert tg.Hyperparameters({"PRESET": preset, "MODEL_DIM": "256", "NUM_HEADS": "4"}).model_dim == 256
    untouched = [n for n, *_ in tg.HPARAMS if n not in tg.PRESETS[preset] and n not in ("PRESET", "RUN_ID")]
    flagship = tg.Hyperparameters({})
    changed = [n for n in untouched if getattr(hp, n.lower()) != getattr(flagship, n.lower())]
    assert set(changed) <= {"SEQ_LEN_SCHEDULE"}  # TRAIN_SEQ_LEN set by the preset: one length throughout


def test_an_unknown_preset_is_refused_with_the_choices():
    with pytest.raises(tg.HyperparameterError, match="PRESET='gpu': expected one of flagship, 1gpu, cpu, smoke, naive"):
        tg.Hyperparameters({"PRESET": "gpu"})

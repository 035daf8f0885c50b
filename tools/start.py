"""Two commands for a fresh clone with ../shared beside it (or PG_SHARED_DATA pointing at the data):

    python3 tools/start.py          # install, prepare the sample data if missing, train and score PRESET=cpu
    python3 tools/start.py test     # install, lint, and run the test suite (what CI runs)

The first ends by printing where the log, the artifact and the score are. `--preset smoke` runs the same job in
about a minute. torch is installed only when it is missing, as the CPU wheel (a bare `torch` would pull several
GB of CUDA packages); a GPU machine keeps its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"


def sh(*cmd: str, env: dict | None = None) -> None:
    """Runs a step in the repository root, its output shown as it comes; a failed step ends here, with its name."""
    print(f"start: {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode:
        raise SystemExit(f"start: failed: {' '.join(cmd)}")


def install() -> None:
    """requirements.txt, except that a torch already there (a GPU machine's) is kept."""
    pip = (sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check")
    if importlib.util.find_spec("torch") is None:
        sh(*pip, TORCH)
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    sh(*pip, *[ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip() and not ln.startswith("torch")])


def prepare_sample(preset: str) -> None:
    """The offline sample the job reads (PRESET=cpu: CaseOps sp8192; smoke and naive: sp1024), built if missing."""
    sys.path.insert(0, str(ROOT))
    import train_gpt  # after install(): it needs torch
    from data.prepare import SAMPLES

    try:
        data = Path(train_gpt.Hyperparameters({**os.environ, "PRESET": preset}).data_path)
    except train_gpt.HyperparameterError:
        return  # the run says what is wrong, in one line
    variant = next((name for name, (_, folder, _) in SAMPLES.items() if folder == data.name), None)
    if variant and not (ROOT / "data" / "datasets" / data.name / "manifest.json").is_file():
        sh(sys.executable, "data/prepare.py", "--variant", variant)


def run_job(preset: str) -> dict:
    """The main job at a preset; returns where its log and artifact are and its final score."""
    prepare_sample(preset)
    run_id = os.environ.get("RUN_ID") or f"{preset}_{uuid.uuid4().hex[:8]}"
    sh(sys.executable, "train_gpt.py", env={**os.environ, "PRESET": preset, "RUN_ID": run_id})
    log_dir = ROOT / os.environ.get("LOG_DIR", "logs")
    text = (log_dir / f"{run_id}.txt").read_text()
    score = re.findall(r"^final_(\w+)_exact val_loss:\S+ val_bpb:(\S+)$", text, re.M)[-1]
    artifact = re.search(r"^artifact_bytes:(\d+) .* artifact:(\S+)$", text, re.M)
    out = {"log": str(log_dir / f"{run_id}.txt"), "artifact": str(ROOT / artifact.group(2)),
           "artifact_bytes": artifact.group(1), "score": f"{score[0]} val_bpb {score[1]}"}  # fmt: skip
    print("\n".join(f"start: {k}: {v}" for k, v in out.items()), flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=("run", "test"), default="run")
    ap.add_argument("--preset", default="cpu", help="the preset of the main job (cpu, smoke, ...)")
    ap.add_argument("--no-install", action="store_true", help="skip pip (everything is installed)")
    args = ap.parse_args(argv)
    if not args.no_install:
        install()
    if args.what == "test":
        sh(sys.executable, "-m", "ruff", "check", ".")
        sh(sys.executable, "-m", "ruff", "format", "--check", ".")
        sh(sys.executable, "-m", "pytest", "-q")
    else:
        run_job(args.preset)


if __name__ == "__main__":
    main()

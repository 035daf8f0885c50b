"""Makes a records/ submission folder from runs of train_gpt.py, with the checks a reviewer would run.

    # run the packed script for three seeds (configuration from the environment), then build the folder
    python3 tools/record.py run --seeds 1337 42 2025 --name my_idea --author "Ada" --github-id ada \\
        --reference 1.0611 1.0613 1.0620 [--nproc 8] [--track track_10min_16mb]
    # or build it from logs that already exist
    python3 tools/record.py build logs/a.txt logs/b.txt logs/c.txt --name my_idea ...

The folder, records/<track>/<date>_<name>/, holds the train_gpt.py that ran (cut out of the logs, which
begin with the source), requirements.txt, every log, submission.json, plots and a README.md written from
the data. Significance: the mean improvement over the reference in nats and BPB and a one-sided Welch
t-test of "better by at least 0.005 nats" (scipy), against the challenge's bar of p < 0.01.
An artifact over 16,000,000 bytes is always refused, and so are logs of different code or of different
hyperparameters (all but SEED, RUN_ID and LOG_DIR); so are logs whose validation data was not checked against
its manifest.json (val_check:unverified) unless --allow-unverified-val, or is not the challenge's validation set
(val_set:other) unless --allow-other-val; other failed checks refuse the record unless --allow-failed-checks (e.g. a
non-record track on other hardware). Nothing is left half-written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUDGET_BYTES, TRAIN_LIMIT_S, EVAL_LIMIT_S = 16_000_000, 600.0, 600.0
MARGIN_NATS, ALPHA = 0.005, 0.01


class RecordError(ValueError):
    """A log or a record that cannot be accepted, with the reason."""


PER_RUN = ("SEED", "RUN_ID", "LOG_DIR")  # the hyperparameters the seeds of one record may differ in


# -----------------------------------------------------------------------------
# Logs: the stable key:value lines of train_gpt.py
# -----------------------------------------------------------------------------
NUM = r"([-\d.eE+]+)"


@dataclass
class RunLog:
    path: Path
    source: bytes  # the code that ran: the log's first code_bytes bytes
    seed: int
    hparams: dict[str, str]
    stages: dict[str, dict[str, float]]  # prequant / roundtrip / ttt -> val_loss, val_bpb
    artifact_bytes: int
    code_bytes: int
    model_bytes: int
    steps: int
    step_avg_ms: float
    train_tokens: int
    train_s: float
    train_with_calibration_s: float
    eval_s: float
    eval_parts: dict[str, float]
    eval_violation: bool
    train_violation: bool
    val_docs: int
    val_tokens: int
    val_bytes: int
    device: str
    world_size: int
    torch_version: str
    artifact_production_s: float = 0.0  # first step to artifact on disk (training, calibration, export)
    eval_world_size: int = 1  # the ranks the score was computed on (the TTT score depends on it, TTT_WARM_A=1)
    val_check: str = "unverified"  # ok: the validation files are those of DATA_PATH's manifest.json (none: older code)
    val_set: str = "unknown"  # official: the challenge's fingerprint; other
    curve: list[tuple[int, float, float, int]] = field(default_factory=list)  # step, loss, train s, tokens
    val_curve: list[tuple[int, float, float, float]] = field(default_factory=list)  # step, loss, bpb, train s

    @property
    def score(self) -> dict[str, float]:
        """The submission's score: after TTT when it ran, else the round-trip evaluation."""
        return self.stages.get("ttt") or self.stages["roundtrip"]


def final_scores(text: str) -> dict[str, dict[str, float]]:
    """stage (prequant / roundtrip / ttt) -> val_loss, val_bpb, from the final_*_exact lines present."""
    stages = {}
    for stage in ("prequant", "roundtrip", "ttt"):
        m = re.search(rf"^final_{stage}_exact val_loss:{NUM} val_bpb:{NUM}$", text, re.M)
        if m:
            stages[stage] = {"val_loss": float(m.group(1)), "val_bpb": float(m.group(2))}
    return stages


def eval_clock(text: str) -> tuple[float, dict[str, float]] | None:
    """(total seconds, seconds by part) from the eval_time_s: line, if there is one."""
    m = re.search(rf"^eval_time_s:{NUM}(?: eval_compiles:\d+)?((?: \w+:{NUM})*)$", text, re.M)
    return (float(m.group(1)), {k: float(v) for k, v in re.findall(r"(\w+):([\d.]+)", m.group(2))}) if m else None


def _need(pattern: str, text: str, path: Path, what: str) -> re.Match:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise RecordError(f"{path}: no `{what}` line (did the run finish? is it a train_gpt.py log?)")
    return m


def parse_log(path: Path) -> RunLog:
    raw = Path(path).read_bytes()
    text = raw.decode("utf-8", errors="replace")
    art = _need(r"^artifact_bytes:(\d+) code_bytes:(\d+) model_bytes:(\d+)", text, path, "artifact_bytes:")
    code_bytes = int(art.group(2))
    source = raw[:code_bytes]
    if not raw[code_bytes:].startswith(b"\npython:"):
        raise RecordError(f"{path}: the log does not begin with the {code_bytes} bytes of source it reports")
    stages, clock = final_scores(text), eval_clock(text)
    if "roundtrip" not in stages and "ttt" not in stages:
        raise RecordError(f"{path}: no `final_ttt_exact` or `final_roundtrip_exact` line (did the run finish?)")
    avg = _need(rf"^step_avg_ms:{NUM} steps:(\d+) train_tokens:(\d+)", text, path, "step_avg_ms:")
    done = _need(r"^train_done steps:\d+ train_time_ms:(\d+)", text, path, "train_done")
    calib = re.search(rf"^gptq_calibration_batches:\d+ gptq_calibration_end_s:{NUM}", text, re.M)
    if clock is None:
        raise RecordError(f"{path}: no `eval_time_s:` line (did the run finish? is it a train_gpt.py log?)")
    val = _need(r"^val_tokens:(\d+) val_docs:(\d+) val_bytes:(\d+)", text, path, "val_tokens:")
    proven = re.search(r"^val_tokens:.* val_check:(\w+) val_set:(\w+)$", text, re.M)
    env = _need(r"^python:\S+ torch:(\S+) device:(\w+) world_size:(\d+)", text, path, "python:")
    hparams = dict(re.findall(r"^hparam (\w+)=(.*)$", text, re.M))
    train_s = int(done.group(1)) / 1000
    trained_s = float(calib.group(1)) if calib else train_s
    return RunLog(
        path=Path(path), source=source, seed=int(hparams.get("SEED", -1)), hparams=hparams, stages=stages,
        artifact_bytes=int(art.group(1)), code_bytes=code_bytes, model_bytes=int(art.group(3)),
        steps=int(avg.group(2)), step_avg_ms=float(avg.group(1)), train_tokens=int(avg.group(3)),
        train_s=train_s, train_with_calibration_s=trained_s,
        eval_s=clock[0], eval_parts=clock[1],
        eval_violation="\neval_time_violation:" in text, train_violation="\ntrain_time_violation:" in text,
        val_tokens=int(val.group(1)), val_docs=int(val.group(2)), val_bytes=int(val.group(3)),
        **({"val_check": proven.group(1), "val_set": proven.group(2)} if proven else {}),
        device=env.group(2), world_size=int(env.group(3)), torch_version=env.group(1),
        artifact_production_s=float(made.group(1)) if (made := re.search(rf"^artifact_production_s:{NUM}", text, re.M))
        else trained_s + clock[1].get("checkpoint", 0) + clock[1].get("quantize", 0),  # before: on the eval clock
        eval_world_size=int(scored.group(1)) if (scored := re.search(r"^eval_world_size:(\d+)$", text, re.M))
        else int(env.group(3)),
        curve=[(int(s), float(loss), int(ms) / 1000, int(tok)) for s, loss, ms, tok in re.findall(
            rf"^step:(\d+)/\d+ train_loss:{NUM} .*?train_time_ms:(\d+) .*?tokens:(\d+)(?: .*)?$", text, re.M)],
        val_curve=[(int(s), float(loss), float(bpb), int(ms) / 1000) for s, loss, bpb, ms in re.findall(
            rf"^step:(\d+)/\d+ val_loss:{NUM} val_bpb:{NUM} train_time_ms:(\d+)$", text, re.M)],
    )  # fmt: skip


# -----------------------------------------------------------------------------
# Significance: better than the reference by at least MARGIN_NATS, at p < ALPHA
# -----------------------------------------------------------------------------
def load_reference(spec: list[str], nats_per_bpb: float) -> dict:
    """BPB values, or a record folder (its submission.json); returns per-seed nats and BPB."""
    if len(spec) == 1 and Path(spec[0]).is_dir():
        sub = json.loads((Path(spec[0]) / "submission.json").read_text())
        runs = list(sub["seeds"].values())
        bpb = [r["val_bpb"] for r in runs]
        nats = [r.get("val_loss", b * nats_per_bpb) for r, b in zip(runs, bpb)]
        return {"source": str(spec[0]), "val_bpb": bpb, "val_loss": nats}
    try:
        bpb = [float(v) for v in spec]
    except ValueError:
        raise RecordError(f"--reference {' '.join(spec)}: expected BPB values or a record folder") from None
    return {"source": "values", "val_bpb": bpb, "val_loss": [b * nats_per_bpb for b in bpb]}


def significance(ours_nats: list[float], ref_nats: list[float], margin: float = MARGIN_NATS) -> dict:
    """One-sided Welch t-test of mean(ref) - mean(ours) > margin. With a single reference value it is a
    one-sample t-test of ours against that value minus the margin."""
    from scipy import stats

    ours, ref = np.asarray(ours_nats, float), np.asarray(ref_nats, float)
    if len(ours) < 2:
        raise RecordError("significance needs at least 2 seeds of this run")
    if len(ref) >= 2:
        test = stats.ttest_ind(ref - margin, ours, equal_var=False, alternative="greater")
        name = "welch"
    else:
        test = stats.ttest_1samp(ours, ref[0] - margin, alternative="less")
        name = "one_sample"
    gain = float(ref.mean() - ours.mean())
    p = float(test.pvalue)
    return {"test": name, "improvement_nats": gain, "t": float(test.statistic), "p_value": p,
            "margin_nats": margin, "alpha": ALPHA, "passes": bool(gain >= margin and p < ALPHA)}  # fmt: skip


# -----------------------------------------------------------------------------
# Checks a reviewer would run
# -----------------------------------------------------------------------------
def log_names(runs: list[RunLog]) -> list[str]:
    """How a message names each log: its file name, or its whole path where two share a name."""
    names = [r.path.name for r in runs]
    return [n if names.count(n) == 1 else str(r.path) for n, r in zip(names, runs)]


def check_one_configuration(runs: list[RunLog]) -> None:
    """The seeds of a record are one configuration: a log of another width or eval stride would average two
    different models into one score. Names each differing hyperparameter with every log's value."""
    names = log_names(runs)
    keys = dict.fromkeys(k for r in runs for k in r.hparams if k not in PER_RUN)  # in log order, each once
    differing = [k for k in keys if len({r.hparams.get(k) for r in runs}) > 1]
    if differing:
        values = lambda k: ", ".join(f"{r.hparams.get(k, 'unset')} in {n}" for r, n in zip(runs, names))
        listed = ", ".join(f"{k} ({values(k)})" for k in differing)
        raise RecordError(f"logs differ in {listed}: a record's seeds must share one configuration")


def check_validation(runs: list[RunLog], allow_unverified: bool, allow_other: bool) -> None:
    """A record is scored on the challenge's validation set, as DATA_PATH's manifest.json lists it: a log whose
    files were not checked against one (or that predates the check), or on another set, is refused unless told."""
    named = lambda ok: ", ".join(n for r, n in zip(runs, log_names(runs)) if not ok(r))
    if (logs := named(lambda r: r.val_check == "ok")) and not allow_unverified:
        raise RecordError(f"validation data not checked against its manifest.json (val_check not ok) in {logs}: "
                          "run on a dataset with its manifest (data/prepare.py, data/download.py), or "
                          "--allow-unverified-val")  # fmt: skip
    if (logs := named(lambda r: r.val_set == "official")) and not allow_other:
        counts = ", ".join(sorted({f"{r.val_docs:,} documents, {r.val_tokens:,} tokens" for r in runs}))
        raise RecordError(f"not the challenge's validation set (val_set not official; {counts}) in {logs}: "
                          "--allow-other-val to write it anyway")  # fmt: skip


def run_checks(runs: list[RunLog], code: bytes, expect_val: tuple[int, int] | None) -> list[tuple[str, bool, str]]:
    fp = {(r.val_docs, r.val_tokens) for r in runs}
    (docs, tokens), = fp if len(fp) == 1 else ((-1, -1),)  # fmt: skip
    worst = lambda key: max(getattr(r, key) for r in runs)
    checks = [
        ("artifact under 16,000,000 bytes", worst("artifact_bytes") <= BUDGET_BYTES,
         f"largest {worst('artifact_bytes'):,} bytes"),
        ("train time incl. GPTQ calibration under 600 s", worst("train_with_calibration_s") <= TRAIN_LIMIT_S,
         f"longest {worst('train_with_calibration_s'):.1f} s"),
        ("artifact on disk within 600 s of the first step", worst("artifact_production_s") <= TRAIN_LIMIT_S
         and not any(r.train_violation for r in runs), f"longest {worst('artifact_production_s'):.1f} s"),
        ("eval time incl. load and warmup under 600 s",
         worst("eval_s") <= EVAL_LIMIT_S and not any(r.eval_violation for r in runs),
         f"longest {worst('eval_s'):.1f} s"),
        ("validation fingerprint (val_docs, val_tokens)",
         len(fp) == 1 and (expect_val is None or (docs, tokens) == tuple(expect_val)),
         f"{sorted(fp)}" + (f", expected {tuple(expect_val)}" if expect_val else "")),
        ("code size equals the train_gpt.py in the folder",
         all(r.code_bytes == len(code) and r.source == code for r in runs), f"{len(code):,} bytes"),
        ("distinct seeds", len({r.seed for r in runs}) == len(runs), ", ".join(str(r.seed) for r in runs)),
        ("scored at one world size", len({r.eval_world_size for r in runs}) == 1,
         ", ".join(sorted({str(r.eval_world_size) for r in runs}))),
    ]  # fmt: skip
    return checks


# -----------------------------------------------------------------------------
# Plots
# -----------------------------------------------------------------------------
def plot_training(runs: list[RunLog], path: Path):
    """Training loss (and validation BPB when the runs logged it) against train time and tokens, per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_val = any(r.val_curve for r in runs)
    fig, axes = plt.subplots(2 if has_val else 1, 2, figsize=(11, 7.5 if has_val else 4), squeeze=False)
    for r in runs:
        step, loss, secs, toks = zip(*r.curve) if r.curve else ([],) * 4
        axes[0][0].plot(secs, loss, label=f"seed {r.seed}", lw=1)
        axes[0][1].plot(np.asarray(toks) / 1e6, loss, label=f"seed {r.seed}", lw=1)
        if has_val and r.val_curve:
            vstep, _, bpb, vsecs = zip(*r.val_curve)
            per_step = r.train_tokens / max(r.steps, 1)
            axes[1][0].plot(vsecs, bpb, "o-", label=f"seed {r.seed}", ms=3)
            axes[1][1].plot(np.asarray(vstep) * per_step / 1e6, bpb, "o-", label=f"seed {r.seed}", ms=3)
    for row, what in enumerate(["train loss (nats/token)", "val BPB (doc-masked chunks)"][: len(axes)]):
        for col, x in enumerate(["train time (s)", "train tokens (M)"]):
            ax = axes[row][col]
            ax.set(xlabel=x, ylabel=what)
            ax.grid(alpha=0.3)
            ax.legend()
    axes[0][0].set_title("training loss against time")
    axes[0][1].set_title("training loss against tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stages(runs: list[RunLog], path: Path):
    """Validation BPB at each stage (before quantization, after the artifact round trip, after TTT)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in ("prequant", "roundtrip", "ttt") if all(s in r.stages for r in runs)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        vals = [r.stages[s]["val_bpb"] for s in names]
        bars = ax.bar(np.arange(len(names)) + (i - (len(runs) - 1) / 2) * width, vals, width, label=f"seed {r.seed}")
        ax.bar_label(bars, fmt="%.4f", fontsize=7, rotation=90, padding=2)
    lo = min(r.stages[s]["val_bpb"] for r in runs for s in names)
    hi = max(r.stages[s]["val_bpb"] for r in runs for s in names)
    ax.set_ylim(lo - 0.6 * (hi - lo + 1e-3), hi + 0.6 * (hi - lo + 1e-3))
    ax.set_xticks(range(len(names)), [{"prequant": "before quantization", "roundtrip": "artifact round trip",
                                       "ttt": "after TTT"}[s] for s in names])  # fmt: skip
    ax.set(ylabel="val BPB", title="BPB at each stage")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -----------------------------------------------------------------------------
# The record folder
# -----------------------------------------------------------------------------
def summarize(runs: list[RunLog]) -> dict:
    bpb = [r.score["val_bpb"] for r in runs]
    return {
        "val_bpb": float(np.mean(bpb)), "val_bpb_std": float(np.std(bpb, ddof=1)) if len(bpb) > 1 else 0.0,
        "val_loss": float(np.mean([r.score["val_loss"] for r in runs])),
        "artifact_bytes": max(r.artifact_bytes for r in runs), "code_bytes": runs[0].code_bytes,
        "train_seconds": max(r.train_with_calibration_s for r in runs), "eval_seconds": max(r.eval_s for r in runs),
    }  # fmt: skip


def config_diff(runs: list[RunLog], reference_hparams: dict[str, str] | None) -> list[tuple[str, str, str]]:
    """(name, this run, reference) for each hyperparameter that differs: from the reference record's logs when
    there are some, else from the flagship defaults of train_gpt.py."""
    sys.path.insert(0, str(ROOT))
    import train_gpt

    base = reference_hparams or {n: str(d) for n, _, d, _, _ in train_gpt.HPARAMS}
    ours = {k: v for k, v in runs[0].hparams.items() if k not in PER_RUN}
    return [(k, v, base.get(k, "—")) for k, v in ours.items() if base.get(k) != v]


def write_readme(path: Path, meta: dict, runs: list[RunLog], checks, sig: dict | None, diff, against: str, reproduce):
    s = meta["summary"]
    lines = [
        f"# {meta['name']}", "",
        f"**val_bpb {s['val_bpb']:.5f}** (mean of {len(runs)} seeds, std {s['val_bpb_std']:.5f}; "
        f"{s['val_loss']:.5f} nats/token). Track `{meta['track']}`, {meta['hardware']}, {meta['date']}. "
        f"By {meta['author']} (@{meta['github_id']}).", "", *([meta["notes"], ""] if meta.get("notes") else []),
        "| seed | steps | ms/step | train tokens | before quantization | artifact round trip | after TTT | "
        "artifact bytes | train s (incl. calibration) | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in runs:
        st = lambda k, r=r: f"{r.stages[k]['val_bpb']:.5f}" if k in r.stages else "—"
        lines.append(f"| {r.seed} | {r.steps} | {r.step_avg_ms:.1f} | {r.train_tokens:,} | {st('prequant')} | "
                     f"{st('roundtrip')} | {st('ttt')} | {r.artifact_bytes:,} | {r.train_with_calibration_s:.1f} | "
                     f"{r.eval_s:.1f} |")  # fmt: skip
    parts = sorted({k for r in runs for k in r.eval_parts})
    lines += ["", "## Timing", "", "Evaluation seconds by part (the clock starts when training stops):", "",
              "| seed | " + " | ".join(parts) + " | total |", "|---" * (len(parts) + 2) + "|"]  # fmt: skip
    for r in runs:
        lines.append(
            f"| {r.seed} | " + " | ".join(f"{r.eval_parts.get(k, 0):.1f}" for k in parts) + f" | {r.eval_s:.1f} |"
        )
    lines += ["", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {name} | {'pass' if ok else '**FAIL**'} | {detail} |" for name, ok, detail in checks]
    lines += ["", "## Significance", ""]
    if sig is None:
        lines.append("No reference given: no claim of improvement.")
    else:
        ref = meta["reference"]
        lines += [
            f"Reference: {ref['source']} (val_bpb {', '.join(f'{b:.5f}' for b in ref['val_bpb'])}).",
            f"Mean improvement {sig['improvement_nats']:.5f} nats/token = {meta['improvement_bpb']:.5f} BPB; "
            f"{sig['test']} t-test of an improvement of at least {sig['margin_nats']} nats: t = {sig['t']:.3f}, "
            f"p = {sig['p_value']:.3g}.",
            f"**Verdict: {'meets' if sig['passes'] else 'does not meet'} the bar** (≥ {sig['margin_nats']} nats "
            f"at p < {sig['alpha']}).",
        ]  # fmt: skip
    lines += ["", "## Configuration", "", f"What differs from {against}:", ""]
    lines += ["| variable | this run | reference |", "|---|---|---|"] + [f"| `{k}` | {v} | {b} |" for k, v, b in diff]
    script = f"records/{meta['track']}/{meta['date']}_{meta['name']}/train_gpt.py"
    command = " ".join(f"{k}={v}" for k, v, _ in reproduce) + f" SEED=<seed> {meta['launch']} {script}"
    lines += ["", "## Reproduce", "", "From the repository root (the variables that differ from the defaults):", "",
              "```bash", command, "```"]  # fmt: skip
    lines += [
        "",
        f"Scored on {runs[0].eval_world_size} rank(s): with `TTT_WARM_A=1` each rank carries its adapters' "
        "A along its own batches, so a replay (`EVAL_ONLY=<artifact>`) gives this score at that world size.",
    ]
    lines += ["", "## Files", "",
              "- `train_gpt.py`: the script that ran (the counted code; identical in every log's first bytes).",
              "- `requirements.txt`, `submission.json`, `logs/train_seed*.txt` (one per seed).",
              "- `training_curves.png`, `stages.png`.", "",
              "![training curves](training_curves.png)", "", "![stages](stages.png)", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def this_machine() -> str:
    """The CPU model and core count of the machine building the record (the logs name only the device type)."""
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0].strip() if names else cpu
    return f"{cpu}, {os.cpu_count()} cores"


def torch_version() -> str:
    """The installed torch's version without its build tag (2.13.0, not 2.13.0+cpu)."""
    import torch

    return torch.__version__.split("+")[0]


def build_record(logs: list[Path], out_root: Path, args) -> Path:
    runs = [parse_log(p) for p in logs]
    if not runs:
        raise RecordError("no logs given")
    code = runs[0].source
    if any(r.source != code for r in runs):
        raise RecordError("the logs ran different code: a record is one train_gpt.py over several seeds")
    check_one_configuration(runs)  # in the order given, so the message reads like the command line
    runs.sort(key=lambda r: r.seed)
    over = [r for r in runs if r.artifact_bytes > BUDGET_BYTES]
    if over:
        sizes = [f"seed {r.seed} {r.artifact_bytes:,} (code {r.code_bytes:,} + model {r.model_bytes:,})" for r in over]
        raise RecordError(f"artifact over the 16,000,000-byte budget: {', '.join(sizes)}")
    check_validation(runs, args.allow_unverified_val, args.allow_other_val)
    checks = run_checks(runs, code, args.expect_val)
    failed = [name for name, ok, _ in checks if not ok]
    if failed and not args.allow_failed_checks:
        raise RecordError(f"checks failed: {'; '.join(failed)} (--allow-failed-checks to write it anyway)")
    nats_per_bpb = runs[0].score["val_loss"] / runs[0].score["val_bpb"]
    reference = load_reference(args.reference, nats_per_bpb) if args.reference else None
    sig = significance([r.score["val_loss"] for r in runs], reference["val_loss"]) if reference else None
    ref_hp = None
    if reference and reference["source"] != "values":
        ref_logs = sorted((Path(reference["source"]) / "logs").glob("*.txt"))
        ref_hp = parse_log(ref_logs[0]).hparams if ref_logs else None
    date, world, summary = args.date or datetime.date.today().isoformat(), runs[0].world_size, summarize(runs)
    meta = {
        "name": args.name, "author": args.author, "github_id": args.github_id, "track": args.track, "date": date,
        "hardware": args.hardware or f"{runs[0].world_size}x {runs[0].device} ({this_machine()})",
        "summary": summary, "reference": reference, "significance": sig, "notes": args.notes,
        "launch": "python3" if runs[0].world_size == 1 else f"torchrun --standalone --nproc_per_node={world}",
        "improvement_bpb": (float(np.mean(reference["val_bpb"])) - summary["val_bpb"]) if reference else None,
    }  # fmt: skip
    submission = {
        "name": args.name, "author": args.author, "github_id": args.github_id, "track": args.track, "date": date,
        "hardware": meta["hardware"], **meta["summary"],
        "seeds": {str(r.seed): {**{f"{k}_{m}": v[m] for k, v in r.stages.items() for m in v}, **r.score,
                                "artifact_bytes": r.artifact_bytes, "steps": r.steps, "train_seconds":
                                r.train_with_calibration_s, "eval_seconds": r.eval_s} for r in runs},
        "val_fingerprint": {"val_docs": runs[0].val_docs, "val_tokens": runs[0].val_tokens,
                            "val_check": runs[0].val_check, "val_set": runs[0].val_set},
        "significance": sig, "improvement_bpb": meta["improvement_bpb"],
        "checks": {name: ok for name, ok, _ in checks},
    }  # fmt: skip
    folder = out_root / args.track / f"{date}_{args.name}"
    if folder.exists() and not args.overwrite:
        raise RecordError(f"{folder} exists (--overwrite to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a record is for reading
        (tmp / "train_gpt.py").write_bytes(code)
        shutil.copy(ROOT / "requirements.txt", tmp / "requirements.txt")
        (tmp / "logs").mkdir()
        for r in runs:
            shutil.copy(r.path, tmp / "logs" / f"train_seed{r.seed}.txt")
        (tmp / "submission.json").write_text(json.dumps(submission, indent=1) + "\n")
        plot_training(runs, tmp / "training_curves.png")
        plot_stages(runs, tmp / "stages.png")
        against = f"the reference record ({reference['source']})" if ref_hp else "the flagship defaults of train_gpt.py"
        reproduce = config_diff(runs, None)
        write_readme(tmp / "README.md", meta, runs, checks, sig, config_diff(runs, ref_hp), against, reproduce)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


RUN_FILES = (".txt", ".ptz", ".float.pt", ".over_budget.ptz")  # what train_gpt.py writes as LOG_DIR/<RUN_ID><suffix>


def clear_run(log_dir: Path, run_id: str) -> list[Path]:
    """Removes the files an unfinished earlier attempt of run_id left in log_dir; returns them. train_gpt.py refuses
    a RUN_ID whose log exists, and a stale artifact could pass for the new run's. Only for a run about to be
    redone: never for a finished run whose results are kept."""
    stale = [Path(log_dir) / f"{run_id}{suffix}" for suffix in RUN_FILES]
    stale = [p for p in stale if p.exists()]
    for p in stale:
        p.unlink()
    return stale


def run_train_gpt(env: dict, capture: bool = True) -> Path:
    """Runs this checkout's train_gpt.py in one process with env (which names LOG_DIR and RUN_ID); returns the
    log's path. A failure raises RecordError with the end of its stderr (when captured)."""
    p = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], env=env, cwd=ROOT, capture_output=capture,
                       text=True)  # fmt: skip
    if p.returncode != 0:
        raise RecordError(f"train_gpt.py run {env['RUN_ID']} exited with {p.returncode}:\n{(p.stderr or '')[-3000:]}")
    return Path(env["LOG_DIR"]) / f"{env['RUN_ID']}.txt"


def run_seeds(seeds: list[int], nproc: int, workdir: Path) -> list[Path]:
    """Packs train_gpt.py and runs it once per seed with the environment's configuration; returns the logs."""
    if len(set(seeds)) != len(seeds):  # refused before hours of runs: a repeat reuses its RUN_ID, adds no evidence
        raise RecordError(f"--seeds {' '.join(map(str, seeds))}: give each seed once (a record's seeds are distinct)")
    sys.path.insert(0, str(ROOT))
    from tools.pack import pack

    script = workdir / "train_gpt.py"
    script.write_bytes(pack((ROOT / "train_gpt.py").read_text(encoding="utf-8")))  # latin-1, not UTF-8
    launch = [sys.executable] if nproc == 1 else ["torchrun", "--standalone", f"--nproc_per_node={nproc}"]
    logs = []
    for seed in seeds:
        env = {**os.environ, "SEED": str(seed), "RUN_ID": f"train_seed{seed}", "LOG_DIR": str(workdir / "logs")}
        print(f"record_run seed:{seed} cmd:{' '.join(launch)} {script}", flush=True)
        p = subprocess.run([*launch, str(script)], env=env, cwd=ROOT)
        if p.returncode != 0:
            raise RecordError(f"seed {seed}: train_gpt.py exited with {p.returncode}")
        logs.append(workdir / "logs" / f"train_seed{seed}.txt")
    return logs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the packed script for each seed, then build the record")
    run.add_argument("--seeds", type=int, nargs="+", required=True)
    run.add_argument("--nproc", type=int, default=1, help="ranks per run (torchrun when > 1)")
    run.add_argument("--keep-logs", type=Path, help="also keep the raw logs here")
    build = sub.add_parser("build", help="build the record from existing logs")
    build.add_argument("logs", type=Path, nargs="+")
    for p in (run, build):
        p.add_argument("--name", required=True, help="folder name: records/<track>/<date>_<name>")
        p.add_argument("--author", default="parameter-golf team")
        p.add_argument("--github-id", default="unknown")
        p.add_argument("--track", default="track_10min_16mb")
        p.add_argument("--hardware", help="e.g. '8xH100 SXM' (default: from the logs and this machine)")
        p.add_argument("--date", help="YYYY-MM-DD (default: today)")
        p.add_argument("--reference", nargs="+", help="reference BPB values, or a record folder")
        p.add_argument("--notes", help="a paragraph for the README: what this record is and why")
        p.add_argument("--expect-val", type=lambda s: tuple(int(x) for x in s.split(":")), metavar="DOCS:TOKENS",
                       help="the validation fingerprint every log must show (CaseOps: 50000:47853343)")  # fmt: skip
        p.add_argument("--records", type=Path, default=ROOT / "records")
        p.add_argument("--allow-failed-checks", action="store_true")
        p.add_argument("--allow-unverified-val", action="store_true", help="accept logs of val_check:unverified")
        p.add_argument("--allow-other-val", action="store_true", help="accept logs of val_set:other (not official)")
        p.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "run":
            with tempfile.TemporaryDirectory() as work:
                logs = run_seeds(args.seeds, args.nproc, Path(work))
                if args.keep_logs:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                    for p in logs:
                        shutil.copy(p, args.keep_logs / p.name)
                folder = build_record(logs, args.records, args)
        else:
            folder = build_record(args.logs, args.records, args)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sub_json = json.loads((folder / "submission.json").read_text())
    print(f"record:{folder} val_bpb:{sub_json['val_bpb']:.8f} val_bpb_std:{sub_json['val_bpb_std']:.8f} "
          f"checks_passed:{all(sub_json['checks'].values())}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

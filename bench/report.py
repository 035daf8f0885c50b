"""Writes bench/RESULTS.md from the JSON files in bench/results/ (a table per benchmark, each with the command
that made it); a benchmark without results is listed as not measured yet, never filled in by hand.

    python3 bench/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
CPU_ENV = "env <README CPU configuration>"


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def section(title: str, command: str, machine: str, body: list[str] | None) -> list[str]:
    out = [f"## {title}", "", f"Command: `{command}`  ", f"Machine: {machine}", ""]
    return out + (body if body else ["**Not measured yet.**"]) + [""]


def classical(d: dict) -> list[str]:
    rows = [f"Validation head: {d['val_docs']} documents, {d['val_bytes']:,} bytes; training sample as context: "
            f"{d['train_bytes']:,} bytes.", "",
            "| compressor | setting | val alone (BPB) | after the training sample (marginal BPB) |",
            "|---|---|---|---|"]  # fmt: skip
    for name, r in d["compressors"].items():
        if "alone_bpb" in r:
            rows.append(f"| {name} | {r['setting']} | {r['alone_bpb']:.4f} | {r['marginal_bpb']:.4f} |")
        else:
            rows.append(f"| {name} | {r['setting']} | {r['status']} | |")
    return rows


def quantization(d: dict) -> list[str]:
    v = d["variants"]
    base = v["prequant"]["val_bpb"]
    rows = [f"One checkpoint of the CPU configuration ({d['params']:,} parameters, {d['steps']} steps); the score "
            "evaluation (sliding 256/128) on the validation head.", "",
            "| variant | val BPB | gap to float | model bytes | bits/param |", "|---|---|---|---|---|"]  # fmt: skip
    for name, r in v.items():
        gap = "—" if name == "prequant" else f"{r['val_bpb'] - base:+.5f}"
        size = f"{r['model_bytes']:,} | {r['bits_per_param']:.3f}" if r.get("model_bytes") else "— | —"
        rows.append(f"| {name} | {r['val_bpb']:.6f} | {gap} | {size} |")
    return rows


def ttt(d: dict) -> list[str]:
    rows = ["One artifact of the CPU configuration, scored by `EVAL_ONLY` once per variant.", "",
            "| variant | overrides | val BPB | eval seconds | by part |", "|---|---|---|---|---|"]  # fmt: skip
    for name, r in d["variants"].items():
        score = r.get("final_ttt_exact") or r["final_roundtrip_exact"]
        parts = ", ".join(f"{k} {s:.1f}" for k, s in r["eval_parts_s"].items())
        over = " ".join(f"{k}={x}" for k, x in r["overrides"].items()) or "(none)"
        rows.append(f"| {name} | {over} | {score['val_bpb']:.8f} | {r['eval_time_s']:.1f} | {parts} |")
    return rows


def proxy(d: dict) -> list[str]:
    rows = [f"Same wallclock for both ({d['wallclock_s']} s of training), same width and depth; validation head.", "",
            "| configuration | seed | steps | ms/step | train tokens | tokens/s | before quantization | round trip | "
            "after TTT | artifact bytes | eval s |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, seeds in d["runs"].items():
        for seed, r in seeds.items():
            st = lambda k, r=r: f"{r['stages'][k]['val_bpb']:.5f}" if k in r["stages"] else "—"
            rows.append(f"| {name} | {seed} | {r['steps']} | {r['step_avg_ms']:.1f} | {r['train_tokens']:,} | "
                        f"{r['tokens_per_s']:.0f} | {st('prequant')} | {st('roundtrip')} | {st('ttt')} | "
                        f"{r['artifact_bytes']:,} | {r['eval_s']:.1f} |")  # fmt: skip
    return rows


def main() -> None:
    cpu = "2 CPU cores (AMD EPYC), torch 2.13 CPU"
    lines = ["# Benchmark results", "",
             "Written by `python3 bench/report.py` from `bench/results/*.json`; every table names the command that "
             "made it. The CPU figures use the offline sample (sp1024) and the 108-document official validation "
             "head: they compare this project's configurations, not leaderboard entries.", ""]  # fmt: skip
    proxy_cmd = f"{CPU_ENV} python3 bench/proxy_cpu.py --out bench/results/proxy_cpu.json"
    lines += section("CPU equal-time proxy: flagship architecture against the naive baseline", proxy_cmd, cpu,
                     proxy(d) if (d := load("proxy_cpu.json")) else None)  # fmt: skip
    lines += section("Classical compressors", "python3 bench/classical.py --out bench/results/classical.json", cpu,
                     classical(d) if (d := load("classical.json")) else None)  # fmt: skip
    lines += section("Ablations: one technique off at a time", "(next session)", cpu, None)
    quant_cmd = f"{CPU_ENV} python3 bench/quantization.py --out bench/results/quantization_cpu.json"
    lines += section("Quantization", quant_cmd, cpu, quantization(d) if (d := load("quantization_cpu.json")) else None)
    ttt_cmd = f"{CPU_ENV} python3 bench/ttt.py --artifact <run>.ptz --out bench/results/ttt_cpu.json"
    lines += section("Test-time training", ttt_cmd, cpu, ttt(d) if (d := load("ttt_cpu.json")) else None)
    lines += section("1×H100 proxy", "(needs a session with a GPU lent)", "one H100", None)
    out = BENCH / "RESULTS.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(out)


if __name__ == "__main__":
    main()

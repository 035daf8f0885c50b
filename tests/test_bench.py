"""The benchmark tooling: the naive-baseline configuration is what it claims, and RESULTS.md never invents."""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import proxy_cpu  # noqa: E402
import report  # noqa: E402

import train_gpt as tg  # noqa: E402


def readme_cpu_env() -> dict:
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL) if "python3 train_gpt.py" in b)
    return dict(re.findall(r"([A-Z_]+)=(\S+)", block))


def test_the_naive_baseline_switches_off_every_flagship_technique_at_the_same_shape():
    env = readme_cpu_env()
    flag, naive = tg.Hyperparameters(env), tg.Hyperparameters({**env, **proxy_cpu.naive_overrides(env)})
    assert (naive.num_layers, naive.model_dim, naive.num_heads) == (flag.num_layers, flag.model_dim, flag.num_heads)
    assert naive.rope_dims == naive.model_dim // naive.num_heads and naive.qk_gain_init == 1.5
    assert (naive.mlp_act, naive.mlp_mult, naive.skip_gates, naive.ln_scale) == ("relu2", 2.0, 0, 0)
    assert (naive.xsa_last_n, naive.smear_gate, naive.sparse_attn_gate, naive.num_loops) == (0, 0, 0, 0)
    assert naive.parallel_start_layer == naive.num_layers and naive.ema_decay == 0
    assert (naive.muon_ns, naive.muon_row_norm, naive.muon_wd) == ("quintic", 0, 0.0)
    assert (naive.gptq, naive.lqer_top_k, naive.attn_bits, naive.mlp_bits, naive.embed_bits) == (0, 0, 8, 8, 8)
    assert naive.export_compressor == "zlib" and naive.ttt_enabled == 0
    model = tg.GPT(naive)
    names = [n for n, _ in model.named_parameters()]
    assert not any(k in n for n in names for k in ("lane_post", "smear", "gate_w", "skip_gates"))
    assert model.virtual_layers() == list(range(naive.num_layers))


def test_results_md_marks_what_was_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "BENCH", tmp_path)
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    report.main()
    empty = (tmp_path / "RESULTS.md").read_text()
    assert empty.count("**Not measured yet.**") == 6
    (tmp_path / "results").mkdir()
    classical = {"val_docs": 2, "val_bytes": 100, "train_bytes": 1000,
                 "compressors": {"xz": {"setting": "s", "alone_bpb": 2.5, "marginal_bpb": 2.0}}}  # fmt: skip
    (tmp_path / "results" / "classical.json").write_text(json.dumps(classical))
    report.main()
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.count("**Not measured yet.**") == 5 and "| xz | s | 2.5000 | 2.0000 |" in text

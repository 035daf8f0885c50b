"""The benchmark tooling: the naive-baseline configuration is what it claims, and RESULTS.md never invents."""

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import ablations  # noqa: E402
import gpu_proxy  # noqa: E402
import numpy as np  # noqa: E402
import packing  # noqa: E402
import probes  # noqa: E402
import quantization  # noqa: E402
import report  # noqa: E402
import torch  # noqa: E402

import train_gpt as tg  # noqa: E402
from tests.helpers import randomize  # noqa: E402
from tools import record  # noqa: E402


def readme_cpu_env() -> dict:
    """The README's CPU command's variables, its preset spelled out."""
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL) if "python3 train_gpt.py" in b)
    env = dict(re.findall(r"([A-Z_]+)=(\S+)", block))
    return {**tg.PRESETS[env.get("PRESET", "flagship")], **env}


def test_the_naive_preset_is_the_baseline_recipe_with_its_init_attention_and_export():
    """PRESET=naive: the official naive baseline (reference_records.md section 2) at issue 21's CPU recipe, with
    every later technique off, PyTorch's init with zeroed output projections, attention across documents, and
    the int8 rows + fp16 + zlib export."""
    naive = tg.Hyperparameters({"PRESET": "naive"})
    shape = (naive.num_layers, naive.model_dim, naive.num_heads, naive.num_kv_heads, naive.train_seq_len)
    assert shape == (4, 128, 4, 2, 256) and (naive.train_batch_tokens, naive.max_wallclock_seconds) == (16384, 300)
    assert naive.rope_dims == naive.model_dim // naive.num_heads and naive.qk_gain_init == 1.5
    assert (naive.mlp_act, naive.mlp_mult, naive.skip_gates, naive.ln_scale) == ("relu2", 2.0, 0, 0)
    assert (naive.xsa_last_n, naive.smear_gate, naive.sparse_attn_gate, naive.num_loops) == (0, 0, 0, 0)
    assert (naive.logit_asym, naive.ngram_tilt, naive.ttt_enabled, naive.ema_horizon_frac) == (0, 0, 0, 0.0)
    assert (naive.muon_ns, naive.muon_row_norm, naive.muon_wd, naive.embed_wd, naive.grad_clip_norm) == (
        "quintic", 0, 0.0, 0.0, 0.0)  # fmt: skip
    assert (naive.matrix_lr, naive.scalar_lr, naive.tied_embed_lr, naive.beta2, naive.min_lr) == (
        0.04, 0.04, 0.05, 0.95, 0.0)  # fmt: skip
    assert (naive.muon_momentum_warmup_start, naive.muon_momentum) == (0.85, 0.95)
    # the official script's 500-step momentum warmup and 150-step warmdown, at the anchor's 342 steps
    assert abs(naive.muon_momentum_warmup_frac * 342 - 500) < 2 and abs(naive.warmdown_frac * 342 - 150) < 1
    assert (naive.linear_init, naive.doc_attention, naive.export_scheme, naive.export_compressor) == (
        "default", 0, "int8_baseline", "zlib")  # fmt: skip
    assert naive.eval_stride == 0 and naive.parallel_start_layer == naive.num_layers
    # the baseline's sp1024 data, float32 matmuls and logit cap of 30, whatever PRESET=cpu chose
    assert (naive.vocab_size, naive.cpu_bf16, naive.logit_softcap) == (1024, 0, 30.0) and "sp1024" in naive.data_path
    torch.manual_seed(0)
    model = tg.GPT(naive)
    names = [n for n, _ in model.named_parameters()]
    assert not any(k in n for n in names for k in ("lane_post", "smear", "gate_w", "skip_gates", "logit_caps"))
    assert model.virtual_layers() == list(range(naive.num_layers))
    q, fc = model.blocks[0].attn.c_q.weight, model.blocks[0].mlp.fc.weight  # nn.Linear's U(+-1/sqrt(fan_in))
    assert q.abs().max() <= 128**-0.5 and abs(q.std().item() - 128**-0.5 / 3**0.5) < 0.003
    assert abs(fc.std().item() - 128**-0.5 / 3**0.5) < 0.003 and not (q @ q.T).allclose(torch.eye(128), atol=0.1)
    assert all(b.attn.proj.weight.abs().sum() == 0 and b.mlp.proj.weight.abs().sum() == 0 for b in model.blocks)
    x = torch.tensor([[5, 6, tg.BOS_ID, 7, 8]])  # across documents: one segment per row, however many BOS
    layout = tg.make_layout(x, "sdpa", None, naive.doc_attention)  # SDPA's causal kernel over the whole row
    assert layout.mask is None and layout.starts.tolist() == [[True, False, False, False, False]]
    packed_row = tg.make_layout(x, "sdpa", torch.tensor([[True, False, False, True, False]]), naive.doc_attention)
    assert packed_row.mask[0, 0, 4].tolist() == [False, False, False, True, True]  # packed segments stay apart
    packed = tg.quantize_model(randomize(model).state_dict(), None, naive)
    kinds = {n: k for n, (k, _, _) in packed.items()}
    assert kinds["tok_emb.weight"] == "int8_row" and set(kinds.values()) == {"int8_row", "fp16"}  # 131,072 entries
    assert all(kinds[n] == "fp16" for n, t in model.state_dict().items() if t.numel() <= 65536)
    emb = model.tok_emb.weight.detach()
    row_max = emb.abs().amax(1)
    back = tg.dequantize_model(tg.deserialize(tg.serialize(packed, "zlib")[0]))["tok_emb.weight"]
    assert ((back - emb).abs() <= row_max[:, None] / 127 / 2 + 1e-3).all()  # clipped near max: half a step


def test_results_md_marks_what_was_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "BENCH", tmp_path)
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    report.main()
    empty = (tmp_path / "RESULTS.md").read_text().split(report.NOTEBOOK)[0]  # the generated part
    assert empty.count("**Not measured yet.**") == 18
    (tmp_path / "results").mkdir()
    classical = {"val_docs": 2, "val_bytes": 100, "train_bytes": 1000, "date": "2026-01-02",
                 "compressors": {"xz": {"setting": "s", "alone_bpb": 2.5, "marginal_bpb": 2.0}}}  # fmt: skip
    (tmp_path / "results" / "classical.json").write_text(json.dumps(classical))
    report.main()
    text = (tmp_path / "RESULTS.md").read_text().split(report.NOTEBOOK)[0]
    assert text.count("**Not measured yet.**") == 17 and "| xz | s | 2.5000 | 2.0000 |" in text
    assert text.count("Date: ") == 1 and "Date: 2026-01-02" in text


def test_each_ablation_changes_only_its_technique():
    env = readme_cpu_env()
    flag = tg.Hyperparameters({**env, **ablations.FIXED})  # the baseline as the sweep runs it
    table = ablations.ablations(env)
    switched = {"xsa": ("xsa_last_n", 0), "smear_gate": ("smear_gate", 0), "recurrence": ("num_loops", 2),
                "parallel_residuals": ("parallel_start_layer", flag.num_layers - 1), "ema": ("ema_horizon_frac", 0.0),
                "sparse_attn_gate": ("sparse_attn_gate", 0), "partial_rope": ("rope_dims", 8), "gptq": ("gptq", 0),
                "lqer": ("lqer_top_k", 0), "ttt": ("ttt_enabled", 1),
                "asym_logit": ("logit_softcap", 30.0), "ngram_tilt": ("ngram_tilt", 0)}  # fmt: skip
    assert set(table) == {"baseline", "muoneq_r_polar", "progressive_context", "short_chunks", *switched}
    assert {"recurrence", "parallel_residuals", "partial_rope", "asym_logit"} <= ablations.switched_on(env)  # the
    # CPU preset leaves all four out (no logit cap at all): their rows switch them on
    for name, (_, overrides) in table.items():
        hp = tg.Hyperparameters({**env, **ablations.FIXED, **overrides})
        changed = {n.lower() for n, *_ in tg.HPARAMS if getattr(hp, n.lower()) != getattr(flag, n.lower())}
        changed.discard("run_id")  # a fresh one per process
        if name == "baseline":
            assert changed == set()
        elif name == "muoneq_r_polar":
            assert (hp.muon_ns, hp.muon_row_norm) == ("quintic", 0) and changed == {"muon_ns", "muon_row_norm"}
        elif name == "progressive_context":  # the CPU length, 256, reached by a quarter and a half of it
            assert hp.seq_len_schedule_parsed == [(64, 0.1), (128, 0.7), (256, 1.0)]
            assert changed == {"seq_len_schedule", "seq_len_warmup_steps"}
        elif name == "short_chunks":  # on top of the TTT row
            assert hp.ttt_enabled and hp.ttt_short_chunks_parsed == [(256, 8), (2000, 24)]
            assert changed == {"ttt_enabled", "ttt_short_chunks"}
        else:
            attr, value = switched[name]
            assert changed == {attr} and getattr(hp, attr) == value, name


def test_a_resumed_sweep_removes_the_stale_files_of_the_runs_it_redoes(tmp_path, monkeypatch):
    """An interrupted sweep left files of runs it had not finished; the rerun removes them before running those
    again (train_gpt.py refuses a RUN_ID whose log exists: the fake creates its log exclusively, as it does) and
    keeps the finished baseline's, whose artifact the TTT row reads."""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    for run_id in ("baseline_seed1", "xsa_seed1", "ttt_seed1"):
        for suffix in record.RUN_FILES:
            (logdir / f"{run_id}{suffix}").write_text("from the interrupted attempt")
    sweep = ablations.Sweep(tmp_path / "sweep.json", {"steps": 2, "seeds": [1], "config": {}})
    sweep.add("baseline", 1, {"stages": {}})
    ran = []

    def fake_train_gpt(env):
        log = Path(env["LOG_DIR"]) / f"{env['RUN_ID']}.txt"
        with open(log, "x") as f:
            f.write("this attempt")
        ran.append(env["RUN_ID"])
        return log

    monkeypatch.setattr(ablations, "run_train_gpt", fake_train_gpt)
    run = SimpleNamespace(stages={}, model_bytes=1, artifact_bytes=1, steps=2, step_avg_ms=1.0, eval_parts={})
    monkeypatch.setattr(ablations, "parse_log", lambda path: run)
    table = {"baseline": ("", {}), "xsa": ("XSA off", {"XSA_LAST_N": "0"}), "ttt": ("TTT on", {"TTT_ENABLED": "1"})}
    base = {"LOG_DIR": str(logdir)}
    for name in table:
        ablations.run_row(sweep, table, name, 1, base, logdir)
    assert ran == ["xsa_seed1", "ttt_seed1"] and all(sweep.done(n, 1) for n in table)
    assert sorted(p.name for p in logdir.iterdir()) == sorted(
        [f"baseline_seed1{suffix}" for suffix in record.RUN_FILES] + ["ttt_seed1.txt", "xsa_seed1.txt"]
    )
    assert {(logdir / f"baseline_seed1{s}").read_text() for s in record.RUN_FILES} == {"from the interrupted attempt"}
    assert (logdir / "xsa_seed1.txt").read_text() == "this attempt"


def test_a_sweep_of_a_preset_whose_values_changed_starts_afresh(tmp_path, monkeypatch):
    """The same PRESET=cpu in the environment, but the preset's own values changed since the sweep ran: its
    results are of another configuration, so the sweep starts over instead of skipping those runs."""
    path = tmp_path / "sweep.json"
    sweep = ablations.Sweep(path, ablations.sweep_header({"PRESET": "cpu"}, 2, [1]))
    sweep.add("baseline", 1, {"stages": {}})
    assert ablations.Sweep(path, ablations.sweep_header({"PRESET": "cpu"}, 2, [1])).done("baseline", 1)
    monkeypatch.setitem(tg.PRESETS["cpu"], "MLP_MULT", "3")
    assert not ablations.Sweep(path, ablations.sweep_header({"PRESET": "cpu"}, 2, [1])).done("baseline", 1)


def test_ablation_table_signs_and_effects(tmp_path):
    def run(pre, rt, ttt=None):
        stages = {"prequant": {"val_bpb": pre}, "roundtrip": {"val_bpb": rt}}
        return {"stages": {**stages, **({"ttt": {"val_bpb": ttt}} if ttt else {})}, "model_bytes": 100}

    d = {"steps": 10, "seeds": [1, 2], "ablations": {
            "baseline": {"change": "-", "overrides": {}, "switches_on": False},
            "xsa": {"change": "XSA off", "overrides": {"XSA_LAST_N": "0"}, "switches_on": False},
            "ema": {"change": "EMA off", "overrides": {"EMA_HORIZON_FRAC": "0"}, "switches_on": False},
            "lqer": {"change": "LQER off", "overrides": {"LQER_TOP_K": "0"}, "switches_on": False},
            "progressive_context": {"change": "on", "overrides": {"SEQ_LEN_WARMUP_STEPS": "2"}, "switches_on": True},
            "ttt": {"change": "TTT on", "overrides": {"TTT_ENABLED": "1"}, "switches_on": True},
            "ngram_tilt": {"change": "tilt off", "overrides": {}, "switches_on": False,
                           "eval_only": ["baseline", "roundtrip", "roundtrip"]},
            "short_chunks": {"change": "short on", "overrides": {}, "switches_on": True,
                             "eval_only": ["ttt", "ttt", "ttt"]}},
         "runs": {"baseline": {"1": run(2.0, 2.01), "2": run(2.002, 2.012)},
                  "xsa": {"1": run(2.05, 2.06), "2": run(2.04, 2.05)},  # worse without XSA: it helps
                  "ema": {"1": run(2.0, 2.0), "2": run(2.002, 2.02)},  # mixed signs
                  "lqer": {"1": run(2.0, 2.0101), "2": run(2.002, 2.05)},  # one seed within the noise
                  "progressive_context": {"1": run(2.0, 2.0), "2": run(2.002, 2.0)},  # better on: it helps
                  "ttt": {"1": run(2.0, 2.01, 1.9), "2": run(2.002, 2.012, 1.95)},
                  "ngram_tilt": {"1": {"stages": {"roundtrip": {"val_bpb": 2.03}}, "model_bytes": 100},
                                 "2": {"stages": {"roundtrip": {"val_bpb": 2.032}}, "model_bytes": 100}},
                  "short_chunks": {"1": run(2.0, 2.01, 1.89), "2": run(2.002, 2.012, 1.96)}}}  # fmt: skip
    rows = {r.split(" | ")[0][2:]: r.split(" | ") for r in report.ablation(d) if r.startswith("| ")}
    assert rows["xsa"][4] == "+0.04400" and rows["xsa"][-1] == "helps |"
    assert rows["ema"][-1] == "no clear effect |" and rows["lqer"][-1] == "no clear effect |"
    assert rows["progressive_context"][4] == "+0.01100" and rows["progressive_context"][-1] == "helps |"
    assert rows["ttt"][3] == "—" and rows["ttt"][5] == "+0.11000 / +0.06200"
    assert rows["ngram_tilt"][3] == "—" and rows["ngram_tilt"][5] == "+0.02000 / +0.02000"  # against the baseline
    assert rows["short_chunks"][5] == "+0.01000 / -0.01000"  # against the TTT row's TTT score
    del d["runs"]["baseline"]["2"]
    assert report.ablation(d) == []  # no baseline for every seed: nothing to compare


def test_symbol_entropy_of_known_distributions():
    uniform4 = np.tile(np.arange(-2, 2, dtype=np.int8), 256).reshape(32, 32)
    constant = np.zeros((8, 16), dtype=np.int8)
    packed = {"a": ("gptq", {"q": uniform4, "scale": np.ones(32)}, {"cls": "mlp"}),
              "b": ("gptq", {"q": constant + 1, "scale": np.ones(8)}, {"cls": "mlp"}),
              "c": ("fp16", {"w": np.ones(4)}, {})}  # fmt: skip
    e = quantization.symbol_entropy(packed, {"mlp": 300, "rest": 10})
    assert set(e) == {"mlp"} and e["mlp"]["symbols"] == 1024 + 128 and e["mlp"]["compressed_bytes"] == 300
    assert abs(e["mlp"]["per_tensor_bytes"] - 1024 * 2 / 8) < 1e-9  # 2 bits each; a constant tensor costs 0
    assert e["mlp"]["stream_bytes"] > e["mlp"]["per_tensor_bytes"]  # one histogram for both is worse


def test_mfu_flop_count_matches_torch_flop_counter():
    """The analytic matmul count of the MFU figure against what torch counts in a forward + backward of the real
    model, with every feature on, before and after the recurrence switches on."""
    from torch.utils.flop_counter import FlopCounterMode

    env = dict(VOCAB_SIZE="64", NUM_LAYERS="4", MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2", LOOP_START="1",
               LOOP_END="2", NUM_LOOPS="1", PARALLEL_START_LAYER="3", XSA_LAST_N="2", ROPE_DIMS="4",
               GATE_WINDOW="4")  # fmt: skip
    hp = tg.Hyperparameters(env)
    for looping in (False, True):
        model = tg.GPT(hp)
        model.looping = looping
        x = torch.randint(0, 64, (2, 16))
        with FlopCounterMode(display=False) as counter:
            model(x, x, tg.make_layout(x, "sdpa")).mean().backward()
        counted = sum(v for k, v in counter.get_flop_counts()["Global"].items() if str(k) in ("aten.mm", "aten.addmm"))
        assert counted == 6 * gpu_proxy.matmul_params(hp, looping) * x.numel()
    with_attention = gpu_proxy.train_flops_per_token(hp, True, 16)
    assert with_attention == 6 * gpu_proxy.matmul_params(hp, True) + 3 * 6 * 4 * 32 * 8  # 6 virtual layers


def test_gpu_proxy_figures_from_a_run_log():
    log = next((ROOT / "records").glob("*/*/logs/*.txt"))
    known = {name for name, *_ in tg.HPARAMS}  # an older log may name knobs since renamed (EMA_DECAY)
    hp = tg.Hyperparameters({k: v for k, v in re.findall(r"^hparam (\w+)=(.*)$", log.read_text(), re.M) if k in known})
    r = gpu_proxy.summarize(log, hp, 100.0)
    assert r["tokens_per_s"] == r["train_tokens"] / r["train_s"] and r["peak_memory_mib"] is None  # a CPU log
    assert 0 < r["looped_steps"] < r["steps"]  # the recurrence switched on part-way
    lo, hi = (gpu_proxy.train_flops_per_token(hp, on, hp.train_seq_len) for on in (False, True))
    assert lo < r["train_flops_per_token"] < hi
    assert r["mfu"] == r["train_flops_per_token"] * r["tokens_per_s"] / 100e12
    assert abs(r["vs_record_tokens_per_s_per_gpu"] * 808_000 / r["tokens_per_s"] - 1) < 0.001
    table = report.gpu(r)[-1]  # the RESULTS.md row
    assert f"| {r['steps']} | {r['step_avg_ms']:.1f} | {r['tokens_per_s']:,.0f} |" in table


def test_committed_results_md_is_what_report_writes(tmp_path, monkeypatch):
    """RESULTS.md is generated from bench/results, never edited by hand or left stale."""
    monkeypatch.setattr(report, "BENCH", tmp_path)
    report.main()
    assert (tmp_path / "RESULTS.md").read_text() == (ROOT / "bench" / "RESULTS.md").read_text()


def test_every_packing_coder_round_trips_and_none_beats_the_entropy_by_more_than_its_tables():
    """On GPTQ-like integers (a rounded Gaussian per tensor, two classes): every coder decodes exactly, the static
    rANS coder lands within 1% above the zeroth-order entropy, and no coder goes below it by more than the slack of
    a few table bytes (they are i.i.d.: nothing to find beyond the histogram)."""
    rng = np.random.default_rng(0)
    streams = {c: [np.clip(np.round(rng.normal(0, s, (64, 96))), -31, 31).astype(np.int8) for s in (3.0, 5.0)]
               for c in ("attn", "mlp")}  # fmt: skip
    ent = sum(packing.entropy_bytes(q) for qs in streams.values() for q in qs)
    for name, coder in packing.CODERS.items():
        r = coder(streams)
        assert r["exact"], name
        assert r["bytes"] > ent - 64, name
    rans = packing.rans_streams(streams)
    assert rans["bytes"] < 1.01 * ent + rans["table_bytes"] + 16
    assert sum(rans["per_class"].values()) + rans["table_bytes"] == rans["bytes"]


def test_serialize_timing_compares_brotli_with_rans_through_the_artifacts_own_code():
    rng = np.random.default_rng(0)
    q = lambda: np.clip(np.round(rng.normal(0, 6, (256, 256))), -31, 31).astype(np.int8)  # GPTQ-like levels
    packed = {f"blocks.{i}.mlp.fc.weight": ("gptq", {"q": q(), "scale": np.ones(256, np.float16)}, {"cls": "mlp"})
              for i in range(3)}  # fmt: skip
    w = packing.serialize_wall(packed)
    assert w["rans_exact"] and w["brotli_exact"] and w["rans_s"] > 0 and w["cores"] >= 1
    assert w["rans_bytes"] < w["brotli_bytes"]  # i.i.d. levels: rANS reaches their entropy, brotli 0.7% above
    assert "rANS (`EXPORT_COMPRESSOR=rans`)" in "\n".join(report.serialize_wall(w))


def test_ngram_hint_bench_times_the_evaluation_step_and_reads_real_text(tmp_path, sp1024_dataset):
    """The bench on a small stream: its synthetic documents have the requested size, and the real sample's hints
    are counted (some fire, most are right); the report renders it."""
    import ngram_hints

    args = ["--out", str(tmp_path / "ngram_hints.json"), "--tokens", "200000", "--data", str(sp1024_dataset)]
    r = ngram_hints.main(args)
    f, q = r["full_size"], r["quality"]
    assert abs(f["tokens"] - 200_000) < 4_000 and f["docs"] == 50_000 and f["with_hints_s"] > 0
    assert 0 < q["train_sample"]["hinted_share"] < 0.2 and q["train_sample"]["hint_right_share"] > 0.5
    assert json.loads((tmp_path / "ngram_hints.json").read_text())["order"] == 16
    assert "| train_sample |" in "\n".join(report.ngram_hints(r))


def test_probe_outcomes_from_canned_runs():
    """bench/probes.py's classifier: a traceback anywhere wins; an error counts as handled only when it is the last
    stderr line in the tool's format, names the fault and ends the run's log; exit 0 on bad input is silent, with
    the score's coverage of the validation targets; SIGINT's good outcome is exit 130 and the log's last line."""
    c, tb = probes.classify, "Traceback (most recent call last):\n  File x, line 1\nValueError: bad\n"
    err = "error: NUM_LAYERS='four': expected int"
    assert c(2, "", err + "\n", expect="NUM_LAYERS") == ("error", err)
    assert c(2, "", tb + err)[0] == "traceback" and c(2, tb, err)[0] == "traceback"
    assert c(1, "", tb) == ("traceback", "ValueError: bad")
    outcome, msg = c(2, "", "error: checks failed: distinct seeds", expect="MODEL_DIM")
    assert outcome == "silent" and "does not name the fault" in msg
    assert c(2, "", err, expect="NUM_LAYERS", log=f"hparam X=1\n{err}\n")[0] == "error"
    assert c(2, "", err, expect="NUM_LAYERS", log="hparam X=1\nerror: something else\n")[0] == "silent"
    assert c(2, "", err, expect="NUM_LAYERS", log="hparam X=1\n")[0] == "silent"  # the log never says how it ended
    assert c(1, "", "Killed\n")[0] == "silent"
    failed = "verify:FAILED fineweb_val_000000.bin: sha256 differs"
    assert c(1, "", failed, prefixes=("verify:FAILED",), expect="sha256") == ("error", failed)
    assert c(0, "verify:ok\n", "") == ("silent", "exit 0: bad input accepted; last output: verify:ok")
    log = "val_tokens:11 val_docs:2 val_bytes:40\nroundtrip_eval mode:chunked stride:0 val_loss:1 val_bpb:2 tokens:{} "
    log += "bytes:{} eval_time_ms:5\nfinal_roundtrip_exact val_loss:1.0 val_bpb:2.0\n"
    assert "scored all 10 of 10 targets, 40 of 40 bytes, val_bpb 2.0" in c(0, "", "", log=log.format(10, 40))[1]
    assert c(0, "", "", log=log.format(6, 31)) == (
        "silent",
        "exit 0: bad input accepted; roundtrip scored only 6 of 10 targets, 31 of 40 bytes, val_bpb 2.0",
    )
    newer = log.format("10 expected_tokens:10", "40 expected_bytes:40")  # the totals beside the counts
    assert "scored all 10 of 10 targets" in c(0, "", "", log=newer)[1]
    assert c(None, "step:1\n", "", timed_out=True, timeout=90) == (
        "hang", "no result after 90 s; last output: step:1")  # fmt: skip
    kept = "error: interrupted; kept: a.txt"
    assert c(130, "", "", log=f"step:2\n{kept}\n", interrupt=True) == ("error", kept)
    assert c(0, "", "", log=f"step:2\n{kept}\n", interrupt=True)[0] == "silent"
    assert c(130, "", "", log="step:2\n", interrupt=True)[0] == "silent"


def test_probe_set_and_its_damaged_artifacts():
    """Probe names are unique and every probe names the fault it expects (else any error would pass it); the
    damaged artifacts fail where they claim to: a flipped byte at a checksum, the undecodable stream past them."""
    ps = probes.all_probes(ROOT)
    assert len({p.name for p in ps}) == len(ps) >= 55
    assert all(p.expect for p in ps if p.good != "interrupt")
    rng = np.random.default_rng(0)
    packed = {k: ("fp16", {"w": rng.normal(size=4096).astype(np.float16)}, {}) for k in ("a", "b")}
    blob = tg.serialize(packed, "brotli")[0]
    assert set(tg.deserialize(blob)) == {"a", "b"}
    with pytest.raises(tg.ArtifactError, match="checksum"):
        tg.deserialize(probes.flip_byte_near_end(blob))
    damaged = probes.undecodable_stream(blob)  # made outside the raises: a fixture that fails is no artifact error
    with pytest.raises(Exception) as e:  # noqa: B017 (today brotli's own error; an ArtifactError once handled)
        tg.deserialize(damaged)
    assert "checksum" not in str(e.value) and "length" not in str(e.value)


def test_probes_section_lists_what_was_not_handled():
    r = lambda name, outcome, msg: {"name": name, "what": "w", "outcome": outcome, "message": msg, "seconds": 1.0}
    d = {
        "probes_n": 3,
        "repo": "/r",
        "repo_version": "abc",
        "mem_gb": 8.0,
        "seconds": 30.0,
        "fixture_seconds": 9.0,
        "totals": {"error": 1, "traceback": 1, "silent": 1, "hang": 0},
        "probes": [r("a", "error", "error: x"), r("b", "traceback", "ValueError: a|b"), r("c", "silent", "exit 0")],
    }
    text = "\n".join(report.probes(d))
    assert "**1 error, 1 traceback, 1 silent, 0 hang.**" in text and "Handled (1): `a`." in text
    assert "| `b` | w | traceback | 1.0 | ValueError: a\\|b |" in text and "| `c` |" in text and "| `a` |" not in text


def test_val_check_bench_times_both_checks_through_train_gpt(tmp_path, sp1024_dataset, caseops_dataset):
    """bench/val_check.py at a small size: the hashed files have the requested tokens, both samples are replicated
    to the requested documents and proven (in one process and as rank 0 of 8), and the report renders it."""
    import val_check

    data = tmp_path / "datasets"
    data.mkdir()
    (data / "sample_sp1024").symlink_to(sp1024_dataset)
    (data / "sample_caseops_sp8192").symlink_to(caseops_dataset)
    args = [
        "--data",
        str(data),
        "--docs",
        "250",
        "--hash-tokens",
        "100000",
        "--repeats",
        "1",
        "--out",
        str(tmp_path / "v.json"),
    ]
    r = val_check.main(args)
    assert r["hashing"]["bytes"] == 2 * (4 * 256 + 2 * 100_000) and r["hashing"]["runs"][0]["wall_s"] > 0
    assert set(r["proof"]) == {"caseops", "sp1024"} and "load_validation" in r["proof"]["caseops"]
    assert all(p["docs"] == 250 and p["one_process"]["cpu_s"] >= p["rank_0_of_8"]["cpu_s"] for p in r["proof"].values())
    assert (
        r["proof"]["caseops"]["byte_source"] == "sidecar" and r["proof"]["sp1024"]["byte_source"] == "tokenizer_tables"
    )
    assert json.loads((tmp_path / "v.json").read_text())["proof"]["sp1024"]["tokens"] == r["proof"]["sp1024"]["tokens"]
    assert "| caseops | sidecar | 250 |" in "\n".join(report.val_check(r))

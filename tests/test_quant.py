"""Quantization and the artifact: GPTQ, LQER, the container, the packed script and the budget."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt as tg
from tests.helpers import TINY, randomize, tiny_hp, train_tiny
from tools import pack

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(small_dataset):
    """A toy model trained 40 steps on real text, and Hessians from its training stream (never validation)."""
    hp, model, loader = train_tiny(small_dataset, 40)
    hessians, batches = tg.collect_hessians(model, loader, hp, hp.train_seq_len, float("inf"), "sdpa", CPU, 1)
    loader.close()
    assert batches == hp.gptq_calibration_batches
    return hp, model, hessians


def output_error(W, Q, H):
    """Sum over the calibration inputs x of |x (W - Q)^T|^2 = tr((W - Q) H (W - Q)^T)."""
    D = W - Q
    return float(torch.einsum("ij,jk,ik->", D, H, D))


def test_hessians_cover_every_quantized_matrix_and_every_looped_pass(trained):
    hp, model, hessians = trained
    names = [n for n in model.state_dict() if tg.quant_class(n)]
    assert sorted(hessians) == sorted(names)
    tokens = hp.gptq_calibration_batches * hp.train_batch_tokens
    assert hessians["tok_emb.weight"].trace() > 0
    H0, H3, H4 = (hessians[f"blocks.{i}.attn.c_q.weight"] for i in (0, 3, 4))
    assert H0.shape == (hp.model_dim, hp.model_dim) and torch.allclose(H0, H0.T)
    # the input is rms_norm(x) / sqrt(layer + 1), so trace(H) = passes x tokens x dim / (layer + 1)
    assert float(H0.trace()) == pytest.approx(tokens * hp.model_dim, rel=1e-3)
    assert float(H3.trace()) == pytest.approx(3 * tokens * hp.model_dim / 4, rel=1e-3)  # looped: three passes
    assert float(H4.trace()) == pytest.approx(tokens * hp.model_dim / 5, rel=1e-3)


def test_gptq_beats_round_to_nearest_on_real_activations(trained):
    hp, model, hessians = trained
    ratios = []
    for name, W in model.state_dict().items():
        cls = tg.quant_class(name)
        if not cls:
            continue
        bits, sigmas = getattr(hp, f"{cls}_bits"), getattr(hp, f"{cls}_clip_sigmas")
        qmax = 2 ** (bits - 1) - 1
        H = hessians[name]
        (q_rtn, s_rtn), (q_gptq, s_gptq) = (tg.gptq_quantize(W, h, qmax, sigmas, 0.01) for h in (None, H))
        assert q_gptq.abs().max() <= qmax and torch.equal(s_rtn, s_gptq)
        rtn, gptq = output_error(W, q_rtn * s_rtn[:, None], H), output_error(W, q_gptq * s_gptq[:, None], H)
        ratios.append(gptq / rtn)
    print("gptq/rtn output error per matrix:", [round(r, 3) for r in ratios])
    assert len(ratios) == 6 * 6 + 1 and max(ratios) < 1.0


def test_lqer_lowers_the_residual_of_the_tensors_it_repairs(trained):
    hp, model, hessians = trained
    state = model.state_dict()
    plain = tg.quantize_model(state, hessians, tiny_hp(LQER_TOP_K=0), log=lambda _: None)
    repaired = tg.quantize_model(state, hessians, tiny_hp(LQER_TOP_K=3), log=lambda _: None)
    fixed = [n for n, (_, arrays, _) in repaired.items() if "la" in arrays]
    assert len(fixed) == 3
    for name in fixed:
        before = (state[name] - tg.dequantize_entry(*plain[name])).norm()
        after = (state[name] - tg.dequantize_entry(*repaired[name])).norm()
        assert after < 0.99 * before, (name, float(before), float(after))  # A at 2 bits bounds the repair
    others = [n for n in plain if n not in fixed and plain[n][0] == "gptq"]
    worst_other = max((state[n] - tg.dequantize_entry(*plain[n])).norm() for n in others)
    assert min((state[n] - tg.dequantize_entry(*plain[n])).norm() for n in fixed) >= worst_other


@pytest.mark.parametrize("method", ["rans", "brotli"])
def test_container_round_trip_is_exact_and_refuses_damage(trained, method):
    hp, model, hessians = trained
    packed = tg.quantize_model(model.state_dict(), hessians, hp, log=lambda _: None)
    blob, sizes = tg.serialize(packed, method)
    assert sum(sizes.values()) == len(blob) and {"embed", "attn", "mlp", "rest"} <= set(sizes)
    restored = tg.dequantize_model(tg.deserialize(blob))
    expected = tg.dequantize_model(packed)
    assert all(torch.equal(restored[k], expected[k]) for k in expected)
    kinds = {packed[n][0] for n in packed}
    assert kinds == {"gptq", "int8_row", "fp16"} and packed["blocks.0.attn.gate_w"][0] == "int8_row"
    rng = np.random.default_rng(0)
    for pos in [0, 4, 6, 13, 20, *rng.integers(13, len(blob), 30)]:
        bad = bytearray(blob)
        bad[pos] ^= 0x41
        with pytest.raises(tg.ArtifactError):
            tg.deserialize(bytes(bad))
    head = tg.deserialize(blob, header_only=True)  # a stream whose checksum matches bytes brotli cannot read
    at = len(blob) - sum(clen for _, clen, *_ in head["streams"])
    name, clen, _, rawlen, tables = head["streams"][0]
    junk = bytes(rng.integers(0, 256, clen, dtype=np.uint8))
    head["streams"][0] = [name, clen, tg.zlib.crc32(junk), rawlen, tables]
    h = tg.COMPRESSORS["brotli"][0](tg.json.dumps(head).encode())
    forged = blob[:5] + tg.struct.pack("<II", len(h), tg.zlib.crc32(h)) + h + junk + blob[at + clen :]
    with pytest.raises(tg.ArtifactError, match=f"stream '{name}' does not decompress"):
        tg.deserialize(forged)
    for cut in (5, 100, len(blob) - 1):
        with pytest.raises(tg.ArtifactError, match="truncated|not a model artifact"):
            tg.deserialize(blob[:cut])


def test_rans_codes_every_integer_class_exactly_near_its_entropy(trained):
    """Each GPTQ class's levels come back bit for bit from rANS (the rest stays brotli), within 2% of the per-tensor
    entropy; the header's tables say which streams are rANS. (Brotli can go below that entropy where rows repeat:
    here the embedding's rows of tokens the 4 steps never saw, which took the same updates.)"""
    hp, model, hessians = trained
    packed = tg.quantize_model(model.state_dict(), hessians, hp, log=lambda _: None)
    blob, sizes = tg.serialize(packed, "rans")
    restored = tg.deserialize(blob)
    assert all(np.array_equal(restored[n][1][k], a) for n, (_, arrays, _) in packed.items() for k, a in arrays.items())
    coded = {name: tables for name, *_, tables in tg.deserialize(blob, header_only=True)["streams"]}
    assert coded["rest"] is None and all(coded[c] for c in ("embed", "attn", "mlp"))
    for cls in ("embed", "attn", "mlp"):
        levels = [a["q"] for _, a, m in packed.values() if m.get("cls") == cls]
        entropy = sum(-(c[c > 0] * np.log2(c[c > 0] / q.size)).sum() / 8 for q in levels
                      for c in [np.bincount(q.ravel().astype(np.int64) + 128)])  # fmt: skip
        assert entropy <= sizes[cls] < 1.02 * entropy + 8 * len(levels), cls
    zero = {"w": ("gptq", {"q": np.zeros((4, 8), np.int8), "scale": np.ones(4, np.float16)}, {"cls": "mlp"})}
    assert np.array_equal(tg.deserialize(tg.serialize(zero, "rans")[0])["w"][1]["q"], zero["w"][1]["q"])  # one value


def test_fit_to_budget_spends_the_bytes_where_they_cost_least_output_error(trained):
    """10% under the natural size: the fit lands under it, and its output error (tr(D H D^T) over the matrices)
    is below that of the same matrices all moved to one coarser grid, the finest that fits as well."""
    hp, model, hessians = trained
    before = {n: h.clone() for n, h in hessians.items()}
    packed = tg.quantize_model(model.state_dict(), hessians, hp, log=lambda _: None)
    hp = tiny_hp(ARTIFACT_MAX_BYTES=int(0.9 * len(tg.serialize(packed, "brotli")[0])))
    lines = []
    blob, sizes = tg.fit_to_budget(packed, model.state_dict(), hessians, hp, 0, log=lines.append)
    assert len(blob) == sum(sizes.values()) <= hp.artifact_max_bytes and lines[-1].startswith("fit_round:")
    fitted = tg.deserialize(blob)
    for f in tg.FIT_LADDER:
        uniform = {n: tg.coarsen(e, f) if e[0] == "gptq" else e for n, e in packed.items()}
        if len(tg.serialize(uniform, "brotli")[0]) <= hp.artifact_max_bytes:
            break
    state = model.state_dict()

    def error(p):
        return sum(output_error(state[n], tg.dequantize_entry(*p[n]), hessians[n]) for n in p if p[n][0] == "gptq")

    assert f > 1 and error(fitted) < error(uniform)
    assert all(before[n].equal(h) for n, h in hessians.items())  # read, never written (they may be shared)


def test_lqer_is_refitted_after_the_fit_coarsens_a_tensor(trained):
    """A coarsened tensor's LQER repair is fitted to its new residual: less error than the factors it had,
    which were fitted before the grid changed (and a tensor without a repair gets none)."""
    hp, model, hessians = trained
    state = model.state_dict()
    packed = tg.quantize_model(state, hessians, tiny_hp(LQER_TOP_K="1"), log=lambda _: None)
    name = next(n for n, (_, a, _) in packed.items() if "la" in a)
    coarse = tg.coarsen(packed[name], tg.FIT_LADDER[8])
    refit = tg.coarsen(packed[name], tg.FIT_LADDER[8], state[name], hp)
    assert not np.array_equal(refit[1]["la"], coarse[1]["la"]) or not np.array_equal(refit[1]["lb"], coarse[1]["lb"])
    err = lambda e: float((state[name].float() - tg.dequantize_entry(*e)).norm())
    assert err(refit) < err(coarse)
    plain = next(n for n, (k, a, _) in packed.items() if k == "gptq" and "la" not in a)
    assert "la" not in tg.coarsen(packed[plain], 1.1, state[plain], hp)[1]


def test_row_major_layout_is_not_larger_than_column_major(trained):
    """The container keeps quantized matrices row-major; transposing them measured larger (keep it so)."""
    hp, model, hessians = trained
    packed = tg.quantize_model(model.state_dict(), hessians, hp, log=lambda _: None)
    qs = [a["q"] for kind, a, _ in packed.values() if kind == "gptq"]
    row_major = len(tg.brotli.compress(b"".join(q.tobytes() for q in qs), quality=11))
    col_major = len(tg.brotli.compress(b"".join(np.ascontiguousarray(q.T).tobytes() for q in qs), quality=11))
    assert row_major <= col_major
    blob, sizes = tg.serialize(packed, "brotli")
    assert sum(sizes[c] for c in ("embed", "attn", "mlp")) <= row_major + 3 * 64  # the streams are laid out so


def test_calibration_reads_training_shards_only(trained, monkeypatch, small_dataset, tmp_path):
    hp, model, _ = trained
    data = tmp_path / "data"
    data.mkdir()
    (data / "fineweb_train_000000.bin").write_bytes((small_dataset / "fineweb_train_000000.bin").read_bytes())
    (data / "fineweb_val_000000.bin").write_bytes(b"poisoned: reading this raises")
    read = []
    real = tg.load_shard
    monkeypatch.setattr(tg, "load_shard", lambda path, *a: read.append(path) or real(path, *a))
    hp = tiny_hp(DATA_PATH=data)
    loader = tg.TrainLoader(hp, 0, 1, 1)
    hessians, batches = tg.collect_hessians(model, loader, hp, hp.train_seq_len, float("inf"), "sdpa", CPU, 1)
    loader.close()
    assert batches == hp.gptq_calibration_batches and hessians
    assert read and all(Path(p).name.startswith("fineweb_train_") for p in read)


def test_calibration_stops_at_the_deadline(trained, small_dataset):
    hp, model, _ = trained
    loader = tg.TrainLoader(tiny_hp(DATA_PATH=small_dataset), 0, 1, 1)
    _, batches = tg.collect_hessians(model, loader, hp, hp.train_seq_len, time.perf_counter(), "sdpa", CPU, 1)
    loader.close()
    assert batches == 0


def test_calibration_leaves_a_margin_before_the_deadline(trained, small_dataset):
    """A batch starts only if 1.5x the slowest one so far ends by the deadline; before the first, the estimate
    given (the last training step's time) stands in, so even the first read cannot cross the cap."""
    hp, model, _ = trained
    loader = tg.TrainLoader(tiny_hp(DATA_PATH=small_dataset), 0, 1, 1)
    deadline = time.perf_counter() + 2.0
    _, refused = tg.collect_hessians(model, loader, hp, hp.train_seq_len, deadline, "sdpa", CPU, 1, batch_s=1.5)
    _, read = tg.collect_hessians(model, loader, hp, hp.train_seq_len, deadline, "sdpa", CPU, 1, batch_s=0.01)
    loader.close()
    assert refused == 0 and read >= 1 and time.perf_counter() <= deadline + 0.5


def run(script: Path, env: dict, dataset: Path, cwd: Path, *args: str):
    env = {**os.environ, **TINY, "DATA_PATH": str(dataset), "TOKENIZER_PATH": str(dataset / "tokenizer.model"),
           "LOG_DIR": str(cwd), "RUN_ID": "run", "EVAL_STRIDE": "0", **env}  # fmt: skip
    return subprocess.run([sys.executable, str(script), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_packed_script_runs_like_the_source_and_counts_its_own_size(small_dataset, tmp_path, tiny_run):
    packed = tmp_path / "packed" / "train_gpt.py"
    packed.parent.mkdir()
    packed.write_bytes(pack.pack((ROOT / "train_gpt.py").read_text()))
    assert packed.stat().st_size < (ROOT / "train_gpt.py").stat().st_size / 2
    p = run(packed, {"ITERATIONS": "3"}, small_dataset, tmp_path / "packed")  # tiny_run's configuration
    assert p.returncode == 0, p.stderr[-3000:]
    # the packed log begins with latin-1 code
    logs = {"source": (tiny_run / "run.txt").read_bytes(), "packed": (tmp_path / "packed" / "run.txt").read_bytes()}
    assert logs["packed"].startswith(packed.read_bytes() + b"\npython:")  # the exact bytes that ran, as record.py reads
    logs = {k: v.decode("utf-8", "replace") for k, v in logs.items()}
    losses = {k: re.findall(r"(?:train_loss|val_loss):([\d.]+)", v) for k, v in logs.items()}
    assert losses["source"] == losses["packed"] and len(losses["source"]) >= 5
    code = {k: int(re.search(r"artifact_bytes:\d+ code_bytes:(\d+)", v).group(1)) for k, v in logs.items()}
    assert code["packed"] == packed.stat().st_size and code["source"] == (ROOT / "train_gpt.py").stat().st_size


def test_a_run_that_cannot_fit_keeps_its_artifact_and_checkpoint_and_fails_naming_each_part(
    small_dataset, tmp_path, monkeypatch
):
    env = {**TINY, "DATA_PATH": str(small_dataset), "TOKENIZER_PATH": str(small_dataset / "tokenizer.model"),
           "LOG_DIR": str(tmp_path), "RUN_ID": "over", "EVAL_STRIDE": "0", "ITERATIONS": "2",
           "ARTIFACT_MAX_BYTES": "50000"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(tg.ArtifactError, match=r"> 50000: code \d+ \+ model \d+ \(header:\d+ .*embed:\d+.*over_budget"):
        tg.main()  # the code alone is over 50,000 bytes: no coarsening can fit it
    log = (tmp_path / "over.txt").read_text()
    assert "fit_round:" in log  # it tried
    assert not (tmp_path / "over.ptz").exists() and tg.deserialize((tmp_path / "over.over_budget.ptz").read_bytes())
    ckpt = torch.load(tmp_path / "over.float.pt", weights_only=True)
    assert set(ckpt["state"]) == set(tg.GPT(tiny_hp()).state_dict()) and set(ckpt["hessians"]) >= {"tok_emb.weight"}
    assert not list(tmp_path.glob("*.tmp"))


def test_the_budget_is_kept_at_exactly_its_bytes_and_one_byte_over_is_refused(tmp_path, monkeypatch):
    """The export's edge, without a run: an artifact of exactly ARTIFACT_MAX_BYTES is the natural blob, kept with no
    fit; one byte less makes the fit move (and land under); one byte over with nothing left to coarsen is refused,
    kept as over_budget.ptz. A comparison against the budget plus a margin fails one of the three."""
    torch.manual_seed(0)
    state = randomize(tg.GPT(tiny_hp())).state_dict()
    hp = tiny_hp(LOG_DIR=tmp_path)
    code = 12_345
    natural = tg.serialize(tg.quantize_model(state, None, hp, log=lambda _: None), hp.export_compressor,
                           tg.artifact_run(hp))[0]  # fmt: skip

    def export(budget: int, run_id: str) -> tuple[bytes, list[str]]:
        hp.artifact_max_bytes, hp.run_id, lines = budget, run_id, []
        return tg.export_artifact(state, None, hp, code, lines.append)[0], lines

    blob, lines = export(code + len(natural), "exact")
    assert blob == natural and not any(line.startswith("fit_") for line in lines)
    assert (tmp_path / "exact.ptz").read_bytes() == natural and not (tmp_path / "exact.over_budget.ptz").exists()
    blob, lines = export(code + len(natural) - 1, "fitted")
    assert code + len(blob) <= code + len(natural) - 1 and any(line.startswith("fit_round:1 ") for line in lines)
    monkeypatch.setattr(tg, "FIT_LADDER", (1.0,))  # no coarser grid: nothing left to move
    with pytest.raises(tg.ArtifactError, match=rf"^artifact {code + len(natural)} bytes > {code + len(natural) - 1}:"):
        export(code + len(natural) - 1, "over")
    assert (tmp_path / "over.over_budget.ptz").read_bytes() == natural and not (tmp_path / "over.ptz").exists()


def finals(log: str) -> dict[str, int]:
    m = re.search(r"^artifact_bytes:(\d+) code_bytes:(\d+) model_bytes:(\d+)", log, re.M)
    return dict(zip(("artifact_bytes", "code_bytes", "model_bytes"), map(int, m.groups())))


def test_a_run_20_percent_over_budget_shrinks_to_fit_and_its_checkpoint_re_exports_identically(
    small_dataset, tmp_path, tiny_run
):
    size = finals((tiny_run / "run.txt").read_text())  # the same run unconstrained (ITERATIONS=3)
    budget = size["code_bytes"] + int(0.8 * size["model_bytes"])
    env = {"ITERATIONS": "3", "RUN_ID": "fit", "ARTIFACT_MAX_BYTES": str(budget), "NGRAM_ORDER": "4"}  # tilt hints
    fit = run(ROOT / "train_gpt.py", env, small_dataset, tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    log = (tmp_path / "fit.txt").read_text()
    assert (
        finals(log)["artifact_bytes"] <= budget and (tmp_path / "fit.ptz").stat().st_size == finals(log)["model_bytes"]
    )
    step = r"fit_step round:\d+ tensor:\S+ step_x:([\d.]+) est_saved_bytes:(\d+) est_err:([+-][\d.e+-]+)"
    steps = re.findall(step, log)
    rounds = re.findall(r"fit_round:\d+ model_bytes:(\d+) saved_bytes:(-?\d+)", log)
    assert steps and all(float(x) > 1 and int(b) >= 0 for x, b, _ in steps)  # one step can lower the error a bit
    assert sum(int(b) for _, b, _ in steps) > 0 and sum(float(e) for *_, e in steps) > 0
    assert rounds and int(rounds[-1][0]) == finals(log)["model_bytes"]
    assert sum(int(s) for _, s in rounds) == size["model_bytes"] - finals(log)["model_bytes"]  # same weights as natural
    assert re.search(r"^final_roundtrip_exact val_loss:[\d.]+ val_bpb:[\d.]+$", log, re.M)  # and it scored
    rescue = run(ROOT / "tools" / "rescue.py", {**env, "RUN_ID": "rescue"}, small_dataset, tmp_path,
                 str(tmp_path / "fit.float.pt"))  # fmt: skip
    assert rescue.returncode == 0, rescue.stderr[-3000:]
    rlog = (tmp_path / "rescue.txt").read_text()
    assert re.search(r"^rescue_checkpoint:\S+fit.float.pt record_run:no$", rlog, re.M)  # the log says: not a record
    assert not re.search(r"^train_done ", rlog, re.M) and re.search(r"^final_roundtrip_exact val_loss:", rlog, re.M)
    assert (tmp_path / "rescue.ptz").read_bytes() == (tmp_path / "fit.ptz").read_bytes()
    final = lambda text: re.search(r"^final_roundtrip_exact .*$", text, re.M).group(0)
    assert final(rlog) == final(log)  # the same artifact, the same score: the n-gram tilt's hints included


def test_a_bad_rescue_checkpoint_is_one_clear_error(small_dataset, tmp_path):
    (tmp_path / "bad.float.pt").write_bytes(b"not a checkpoint")
    p = run(ROOT / "tools" / "rescue.py", {}, small_dataset, tmp_path, str(tmp_path / "bad.float.pt"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'bad.float.pt'}:") and "expected a" in last


def test_randomized_weights_survive_the_round_trip_closely():
    torch.manual_seed(0)
    model = randomize(tg.GPT(tiny_hp(MODEL_DIM=128)))
    packed = tg.quantize_model(model.state_dict(), None, tiny_hp(MODEL_DIM=128, LQER_TOP_K=0), log=lambda _: None)
    restored = tg.dequantize_model(tg.deserialize(tg.serialize(packed, "zlib")[0]))
    for name, w in model.state_dict().items():
        if tg.quant_class(name):  # a row's step is 13 sigma / 31 levels: at most half a step off (within the clip)
            assert (restored[name] - w).abs().max() <= 0.5 * 13 / 31 * w.std(dim=1).max() * 1.01, name
        else:  # fp16, or int8 rows for the gates
            assert torch.allclose(restored[name], w, rtol=1e-2, atol=1e-3), name

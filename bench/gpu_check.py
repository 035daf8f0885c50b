"""The prepared GPU check: every CUDA path of train_gpt.py measured stage by stage on one GPU, in one command
that fits the lent machine's few minutes. Each stage runs the script's own functions at the flagship defaults
and is saved the moment it ends, so a stage that fails or a run that is stopped keeps what came before.

Stages, in order of how much a lost run would cost us to learn later:
  env      GPU, torch, triton, CUDA, attention backends and compressors found
  train    the flagship step (786,432 tokens as 8 micro-steps of 48x2048) compiled, looping off then on:
           compile seconds, ms/step, tokens/s, MFU, peak memory, recompiles inside the timed steps
  ttt      one score-first TTT batch of the 64 longest validation documents, chunk by chunk (ms, rows,
           width, memory), then one global SGD step
  export   GPTQ Hessians (per batch), quantization, brotli packing: seconds and bytes at flagship size
  eval     the artifact scored as the official evaluation does it (load, compile warmup, chunked and
           sliding eval): seconds by part and recompiles
  parity   each attention backend against float32 SDPA with an explicit document mask, forward and backward

On the device machine (data and wheels carried; see README.md, "The first GPU run"):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT --budget 330
On CPU, `--tiny` runs every stage at a toy size (the test suite does, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import traceback
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_proxy import H100_BF16_DENSE_TFLOPS, RECORD_TOKENS_PER_S_PER_GPU, train_flops_per_token  # noqa: E402

import train_gpt as tg  # noqa: E402
from tools.record import BUDGET_BYTES  # noqa: E402

SAMPLE = ROOT / "data" / "datasets" / "sample_caseops_sp8192"
RECORD_STEP_MS_8GPU = 121.7  # the public record's 786,432-token step on 8xH100
TINY = {  # a toy model with every flagship feature switched on, for the CPU smoke run
    "NUM_LAYERS": "4", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "LOOP_START": "1",
    "LOOP_END": "2", "PARALLEL_START_LAYER": "3", "XSA_LAST_N": "4", "ROPE_DIMS": "8", "TRAIN_SEQ_LEN": "128",
    "EVAL_SEQ_LEN": "128", "TRAIN_BATCH_TOKENS": "2048", "VAL_BATCH_SIZE": "2048", "TTT_BATCH_DOCS": "4",
    "TTT_CONTEXT": "128", "TTT_LORA_RANK": "4", "TTT_SGD_BATCH_TOKENS": "512", "EVAL_STRIDE": "32",
}  # fmt: skip


class StageTimeout(Exception):
    """Raised inside a stage (from a per-chunk hook) when its share of the budget is spent."""


def dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"frames": counters["frames"]["ok"], "graphs": counters["stats"]["unique_graphs"]}


def delta(before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in dynamo_counts().items()}


class Check:
    """Runs stages against a shared deadline and writes the JSON after each one (atomically)."""

    def __init__(self, out: Path, budget_s: float, device: torch.device):
        self.out, self.device, self.t0, self.budget_s = out, device, time.perf_counter(), budget_s
        self.result: dict = {"command": "python3 " + " ".join(sys.argv), "date": date.today().isoformat(),
                             "budget_s": budget_s, "stages": {}}  # fmt: skip

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def stage(self, name: str, need_s: float, fn):
        print(f"stage:{name} start left_s:{self.left():.0f}", flush=True)
        if self.left() < need_s:
            r = {"skipped": f"{self.left():.0f} s left of the budget, the stage needs about {need_s:.0f}"}
        else:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            try:
                r = fn()
            except Exception as e:  # recorded, and the next stage still runs
                r = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-4000:]}
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            r["stage_s"] = time.perf_counter() - t0
            if self.device.type == "cuda":
                r["stage_peak_memory_mib"] = torch.cuda.max_memory_allocated() // 2**20
        self.result["stages"][name] = r
        self.save()
        brief = {k: v for k, v in r.items() if not isinstance(v, (list, dict)) and k != "traceback"}
        print(f"stage:{name} done {json.dumps(brief)}", flush=True)
        if "traceback" in r:
            print(r["traceback"], flush=True)

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "gpu_check.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=1) + "\n")
        tmp.replace(path)


def env_stage(hp, device) -> dict:
    import brotli
    import zstandard

    r = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
         "device": device.type, "flash_backend": tg.FLASH_BACKEND, "flex": tg.flex_attention is not None,
         "attn_backend": tg.pick_backend(hp.attn_backend, device), "brotli": brotli.__version__,
         "zstandard": zstandard.__version__, "cpu_count": os.cpu_count()}  # fmt: skip
    try:
        import triton

        r["triton"] = triton.__version__
    except ImportError:
        r["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        r.update(gpu=p.name, sm_count=p.multi_processor_count, memory_gib=p.total_memory / 2**30,
                 capability=f"{p.major}.{p.minor}")  # fmt: skip
    return r


class Run:
    """The flagship model, its optimizers and the training stream, shared by the stages that follow."""

    def __init__(self, hp, device):
        self.hp, self.device = hp, device
        self.backend = tg.pick_backend(hp.attn_backend, device)
        self.accum = tg.grad_accum_steps(hp, 1)
        torch.manual_seed(hp.seed)
        self.model = tg.GPT(hp).to(device)
        self.step_model = tg.maybe_compile(self.model, hp, device)
        self.optimizers = tg.build_optimizers(self.model, hp, 0, 1, device)
        self.ema = tg.EMA(self.model) if hp.ema_horizon_frac > 0 else None
        self.loader = tg.TrainLoader(hp, 0, 1, self.accum)
        self.steps, self.blob = 0, None

    def step(self, sync) -> tuple[float, float]:
        t0 = time.perf_counter()
        loss, _ = tg.train_step(self.model, self.step_model, self.optimizers, self.loader, self.hp.train_seq_len,
                                self.backend, self.hp, 1, self.device)  # fmt: skip
        if self.ema is not None:
            self.ema.update(self.model, tg.ema_decay(self.hp, 1 / tg.FLAGSHIP_STEPS))  # a flagship-length step
        sync()
        self.steps += 1
        return 1000 * (time.perf_counter() - t0), loss


def train_stage(run: Run, check: Check, timed_steps: int, peak_tflops: float) -> dict:
    """Per looping mode: the first step (compile), one settling step, then timed steps that must not recompile."""
    hp, out = run.hp, {}
    for looping in (False, True):
        run.model.looping = looping
        before = dynamo_counts()
        first_ms, _ = run.step(check.sync)
        compiles = delta(before)
        run.step(check.sync)
        before = dynamo_counts()
        ms, losses = zip(*[run.step(check.sync) for _ in range(timed_steps)])
        step_ms = float(np.median(ms))
        flops = train_flops_per_token(hp, looping, hp.train_seq_len)
        tokens_per_s = hp.train_batch_tokens / step_ms * 1000
        out["looping_on" if looping else "looping_off"] = {
            "first_step_s": first_ms / 1000, "compile": compiles, "step_ms": list(ms), "step_ms_median": step_ms,
            "tokens_per_s": tokens_per_s, "vs_record_tokens_per_s_per_gpu": tokens_per_s / RECORD_TOKENS_PER_S_PER_GPU,
            "step_ms_scaled_to_8_gpus": step_ms / 8, "train_flops_per_token": flops,
            "mfu": flops * tokens_per_s / (peak_tflops * 1e12) if check.device.type == "cuda" else None,
            "recompiles_in_timed_steps": delta(before), "last_loss": losses[-1],
        }  # fmt: skip
        if check.device.type == "cuda":
            out["peak_memory_mib"] = torch.cuda.max_memory_allocated() // 2**20
    out["profile_looping_on"] = profile_step(run, check)
    run.model.looping = False
    out.update(batch_tokens=hp.train_batch_tokens, grad_accum_steps=run.accum, steps_taken=run.steps,
               attn_backend=run.backend, params=sum(p.numel() for p in run.model.parameters()))  # fmt: skip
    return out


def profile_step(run: Run, check: Check, top: int = 25) -> list[dict]:
    """Where one training step's time goes: the kernels (or CPU ops) with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = check.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run.step(check.sync)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = []
    for e in prof.key_averages():
        us = getattr(e, key, None)
        us = getattr(e, "self_cuda_time_total", 0) if us is None else us
        rows.append({"name": e.key[:160], "self_us": float(us), "count": e.count})
    return sorted(rows, key=lambda r: -r["self_us"])[:top]


def export_stage(run: Run, check: Check, batches: int) -> dict:
    hp = copy.copy(run.hp)
    hp.gptq_calibration_batches = batches
    run.model.looping = hp.num_loops > 0  # calibrated as the exported model runs
    if run.ema is not None:
        run.ema.copy_to(run.model)
    t0 = time.perf_counter()
    hessians, n = tg.collect_hessians(run.model, run.loader, hp, hp.train_seq_len, math.inf, run.backend,
                                      check.device, 1)  # fmt: skip
    check.sync()
    hess_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = tg.quantize_model(run.model.state_dict(), hessians, hp, log=lambda _: None)
    check.sync()
    quant_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run.blob, sizes = tg.serialize(packed, hp.export_compressor)
    pack_s = time.perf_counter() - t0
    code = len((ROOT / "train_gpt.py").read_bytes())
    return {"calibration_batches": n, "hessian_s": hess_s, "hessian_s_per_batch": hess_s / n,
            "hessian_s_at_default_batches": hess_s / n * run.hp.gptq_calibration_batches, "quantize_s": quant_s,
            "pack_s": pack_s, "compressor": hp.export_compressor, "model_bytes": len(run.blob), "streams": sizes,
            "code_bytes": code, "artifact_bytes": code + len(run.blob),
            "fits": code + len(run.blob) <= BUDGET_BYTES, "trained_steps": run.steps}  # fmt: skip


def eval_stage(run: Run, check: Check, val) -> dict:
    hp = copy.copy(run.hp)
    hp.ttt_enabled = 0
    clock, lines, before = tg.EvalClock(), [], dynamo_counts()
    tg.score_artifact(run.blob, hp, val, run.backend, 0, 1, check.device, lines.append, clock)
    check.sync()
    return {"parts_s": clock.parts, "log": lines, "compiles": delta(before), "val_tokens": int(len(val.tokens))}


def eval_steady_stage(run: Run, check: Check, val) -> dict:
    """Each evaluation pass twice through one compiled model from the artifact: the second is the steady rate
    (tokens computed per second), with the compiles of the first counted."""
    hp, model = run.hp, fresh_model(run, check.device)
    scorer, out = tg.maybe_compile(model, hp, check.device), {}
    for mode, stride in (("chunked", 0), ("sliding", hp.eval_stride)):
        segs = tg.eval_segments(val.tokens, hp.eval_seq_len, stride)
        for attempt in ("first", "second"):
            before, t0 = dynamo_counts(), time.perf_counter()
            r = tg.evaluate(scorer, val, hp, stride, run.backend, check.device)
            check.sync()
            out[f"{mode}_{attempt}"] = {"s": time.perf_counter() - t0, "compiles": delta(before),
                                        "val_bpb": r["val_bpb"], "scored_tokens": r["tokens"],
                                        "computed_tokens": sum(n for _, n, _ in segs)}  # fmt: skip
    return out


def fresh_model(run: Run, device) -> tg.GPT:
    model = tg.GPT(run.hp).to(device)
    model.load_state_dict(tg.dequantize_model(tg.deserialize(run.blob), device), strict=True)
    model.looping = run.hp.num_loops > 0
    return model


def ttt_stage(run: Run, check: Check, val, seconds: float) -> dict:
    """The warmup of every TTT shape (compiles and times them), the first (longest) TTT batch as ttt_evaluate
    runs it through the compiled model, stopped after `seconds`; then one global SGD step."""
    hp, device = run.hp, check.device
    model = fresh_model(run, device)
    runner = tg.maybe_compile(model, hp, device)
    val = tg.with_hints(val, hp, device)  # the tilt's hints, as scoring has them: the graphs the warmup made
    docs = tg.doc_spans(val.tokens)
    order = sorted(range(len(docs)), key=lambda i: -docs[i][1])[: hp.ttt_batch_docs]
    spans = [docs[d] for d in order]
    lora = tg.LoRA(hp, hp.ttt_batch_docs, len(model.virtual_layers()), hp.seed, device)
    before, t0 = dynamo_counts(), time.perf_counter()
    shapes = []  # one line per shape: its first call, the compile
    tg.ttt_warmup(runner, model, lora, hp, run.backend, device, 1, lambda m: (print(m, flush=True), shapes.append(m)))
    warmup = {"seconds": time.perf_counter() - t0, "compiles": delta(before), "shapes": shapes}
    chunks, before, deadline = [], dynamo_counts(), time.perf_counter() + seconds
    last = [time.perf_counter()]

    def record(segs, nll, lora_, rows):  # called after each chunk is scored: time the previous chunk's step too
        now = time.perf_counter()
        chunks.append({"rows": len(rows), "width": max(s[1] for s in segs), "ms": 1000 * (now - last[0])})
        last[0] = now
        if now > deadline:
            raise StageTimeout

    t0 = time.perf_counter()
    try:
        tg.ttt_batch(runner, lora, val, spans, hp, run.backend, device, record)
        finished = True
    except StageTimeout:
        finished = False
    check.sync()
    ttt_s = time.perf_counter() - t0
    out = {"docs": len(spans), "longest_doc": spans[0][1], "chunks_total": -(-spans[0][1] // hp.ttt_chunk),
           "chunks_done": len(chunks), "finished": finished, "seconds": ttt_s, "chunks": chunks,
           "compiles": delta(before), "warmup": warmup}  # fmt: skip
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated() // 2**20
    # global SGD: the documents that make one step of TTT_SGD_BATCH_TOKENS, timed twice (the first compiles)
    sgd_docs, n = [], 0
    for d in order:
        if n >= hp.ttt_sgd_batch_tokens:
            break
        sgd_docs.append(docs[d])
        n += docs[d][1]
    for attempt in ("first", "second"):
        t0 = time.perf_counter()
        steps = tg.global_sgd(model, val, sgd_docs, hp, run.backend, device, 0, 1, runner)
        check.sync()
        out[f"sgd_{attempt}_s"], out["sgd_steps"], out["sgd_tokens"] = time.perf_counter() - t0, steps, n
    return out


def parity_stage(hp, device) -> dict:
    """Every backend this machine has, on random document-packed batches, against float32 SDPA with the mask."""
    B, T = (2, 2048) if device.type == "cuda" else (2, 256)
    H, kv, D = hp.num_heads, hp.num_kv_heads, hp.model_dim // hp.num_heads
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, hp.vocab_size, (B, T), generator=g)
    tokens[torch.rand(B, T, generator=g) < 4 / T * 4] = tg.BOS_ID  # about 16 documents a row
    tokens = tokens.to(device)
    q, k, v = (torch.randn(B, T, h, D, generator=g).to(device) for h in (H, kv, kv))
    w = torch.randn(B, T, H, D, generator=g).to(device)

    def run(backend, dtype):
        qq, kk, vv = (t.clone().to(dtype).requires_grad_(True) for t in (q, k, v))
        out = tg.attend(qq, kk, vv, tg.make_layout(tokens, backend))
        (out.float() * w).sum().backward()
        return [out.detach().float(), qq.grad.float(), kk.grad.float(), vv.grad.float()]

    ref = run("sdpa", torch.float32)
    low = torch.bfloat16 if device.type == "cuda" else torch.float32
    backends = ["sdpa", "flex"] + (["fa3"] if tg.FLASH_BACKEND == "fa3" else [])
    out = {"shape": [B, T, H, kv, D], "dtype": str(low)}
    for backend in backends:
        try:
            got = run(backend, low)
            err = [float((a - b).norm() / b.norm()) for a, b in zip(got, ref)]  # outputs are detached copies
            out[backend] = dict(zip(["out_rel_err", "dq_rel_err", "dk_rel_err", "dv_rel_err"], err))
        except Exception as e:
            out[backend] = {"error": f"{type(e).__name__}: {e}"[:1000]}
    return out


def full_val_lengths(val_tokens: np.ndarray, docs: int = 50_000, seed: int = 0) -> np.ndarray:
    """Document lengths of a 50,000-document validation set drawn from the sample's own lengths (the full set
    is not on the machine); longest first, as TTT batches them."""
    lengths = np.array([n for _, n in tg.doc_spans(val_tokens)])
    return np.sort(np.random.default_rng(seed).choice(lengths, docs))[::-1]


def computed_tokens(lengths: np.ndarray, seq_len: int, stride: int) -> int:
    """Positions a pass runs through the model (eval_segments in closed form): each document once in the
    chunked pass; in the sliding pass a document longer than seq_len adds a full window per stride."""
    if stride == 0:
        return int(lengths.sum())
    longer = np.maximum(lengths - seq_len, 0)
    return int(np.minimum(lengths, seq_len).sum() + seq_len * (-(-longer // stride)).sum())


def projection(result: dict, lengths: np.ndarray, gpus: int = 8) -> dict:
    """Eval seconds by part on `gpus` GPUs from the 1-GPU figures, and the total of today's main() (both passes
    before and after quantization, export, load, warmup, TTT with its compiles, global SGD). Passes scale with
    tokens and split over ranks; TTT costs its median chunk step (after the compiles) once per chunk of the
    longest document of each batch, the batches split over ranks; global SGD one measured step per
    TTT_SGD_BATCH_TOKENS of the phases' documents, its rows split over ranks. Per-rank parts (load, warmup,
    export) stay as measured."""
    hp, st = result["hparams"], result["stages"]
    ev, ttt, ex = st.get("eval", {}), st.get("ttt", {}), st.get("export", {})
    out: dict = {"gpus": gpus, "val_docs": int(len(lengths)), "val_tokens": int(lengths.sum())}
    if "quantize_s" in ex:
        out["quantize_s"], out["pack_s"] = ex["quantize_s"], ex["pack_s"]
    if "parts_s" in ev:
        out["load_s"], out["compile_warmup_s"] = ev["parts_s"]["load"], ev["parts_s"].get("compile_warmup", 0.0)
        scale = out["val_tokens"] / (ev["val_tokens"] - 1) / gpus
        for line in [x for x in ev["log"] if " mode:" in x]:  # an upper bound: these include their recompiles
            mode = line.split("mode:")[1].split()[0]
            out[f"{mode}_eval_s"] = float(line.split("eval_time_ms:")[1]) / 1000 * scale
    steady = st.get("eval_steady", {})
    for mode, stride in (("chunked", 0), ("sliding", hp["EVAL_STRIDE"])):
        if f"{mode}_second" in steady:  # the steady rate in tokens computed per second, over the full layout
            r = steady[f"{mode}_second"]
            out[f"{mode}_eval_s"] = (
                computed_tokens(lengths, hp["EVAL_SEQ_LEN"], stride) / (r["computed_tokens"] / r["s"]) / gpus
            )
    if ttt.get("chunks"):
        settled = [c["ms"] for c in ttt["chunks"][4:]] or [c["ms"] for c in ttt["chunks"]]
        step_ms, B, C = float(np.median(settled)), hp["TTT_BATCH_DOCS"], hp["TTT_CHUNK"]
        chunk_steps = sum(-(-int(lengths[i]) // C) for i in range(0, len(lengths), B))
        out.update(ttt_chunk_step_ms=step_ms, ttt_chunk_steps=int(chunk_steps),
                   ttt_s=step_ms / 1000 * chunk_steps / gpus)  # fmt: skip
        phase_docs = sum(min(hp["TTT_PHASE_DOCS"], len(lengths)) * k // hp["TTT_PHASES"]
                         for k in range(1, hp["TTT_PHASES"] + 1))  # fmt: skip
        sgd_steps = phase_docs * float(lengths.mean()) / hp["TTT_SGD_BATCH_TOKENS"]
        out["sgd_s"] = ttt["sgd_second_s"] / ttt["sgd_steps"] * sgd_steps / gpus
    if "parts_s" in ev and all(f"{m}_second" in steady for m in ("chunked", "sliding")):
        # what the first pass of each mode spent beyond the steady rate: the recompiles inside the eval clock
        steady_s = sum(steady[f"{m}_second"]["s"] for m in ("chunked", "sliding"))
        out["pass_recompile_s"] = ev["parts_s"]["roundtrip_eval"] - steady_s
    if ttt.get("chunks"):
        out["ttt_compile_s"] = sum(c["ms"] for c in ttt["chunks"][:4]) / 1000 - 4 * out["ttt_chunk_step_ms"] / 1000
    passes = out.get("chunked_eval_s", 0) + out.get("sliding_eval_s", 0) + out.get("pass_recompile_s", 0)
    once = ("quantize_s", "pack_s", "load_s", "compile_warmup_s", "ttt_s", "ttt_compile_s", "sgd_s")
    out["main_today_s"] = 2 * passes + sum(out.get(k, 0) for k in once)  # pre-quant and round trip: both modes
    return out


def sample_val_tokens(data: Path) -> np.ndarray:
    return tg.load_shard(str(next(data.glob("fineweb_val_0*.bin")))).astype(np.int64)


def merge_runs(specs: list[str], out: Path, data: Path) -> dict:
    """The stages named for each run file, in one result (the runs' commands and dates kept), projected anew."""
    merged: dict = {"runs": [], "stages": {}}
    for spec in specs:
        path, names = spec.split(":")
        run = json.loads(Path(path).read_text())
        merged["runs"].append({"file": Path(path).name, "command": run["command"], "date": run["date"],
                               "stages": names.split(",")})  # fmt: skip
        merged["stages"].update({n: run["stages"][n] for n in names.split(",")})
        merged.setdefault("hparams", run["hparams"])
        merged["stages"].setdefault("env", run["stages"]["env"])
    merged["command"] = "python3 bench/gpu_check.py --merge " + " ".join(specs)
    merged["date"] = max(r["date"] for r in merged["runs"])
    merged["projection"] = projection(merged, full_val_lengths(sample_val_tokens(data)))
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    tmp.replace(out)
    return merged


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for all stages; late ones are skipped")
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per looping mode")
    ap.add_argument("--ttt-seconds", type=float, default=40.0)
    ap.add_argument("--calibration-batches", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    stages = "train,export,ttt,eval,eval_steady,parity"
    ap.add_argument("--only", default=stages, help="stages to run (env always runs)")
    ap.add_argument("--val-docs", type=int, default=0, help="score only the first N validation documents")
    ap.add_argument("--tiny", action="store_true", help="a toy size for CPU (the test suite's smoke run)")
    ap.add_argument("--project", type=Path, help="only (re)compute the 8-GPU projection of a saved JSON")
    ap.add_argument("--merge", nargs="+", metavar="FILE:STAGE,...", help="one JSON of stages taken from several runs")
    args = ap.parse_args(argv)
    if args.merge:
        return merge_runs(args.merge, args.out, args.data)
    if args.project:  # on a machine without the GPU: the lengths come from the local sample
        result = json.loads(args.project.read_text())
        result["projection"] = projection(result, full_val_lengths(sample_val_tokens(args.data)))
        tmp = args.project.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(args.project)
        return result
    env = {"DATA_PATH": str(args.data), "TOKENIZER_PATH": str(args.data / "tokenizer.model"),
           **(TINY if args.tiny else {}), **os.environ}  # fmt: skip
    hp = tg.Hyperparameters(env)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    check = Check(args.out, args.budget, device)
    check.result["hparams"] = {n: getattr(hp, n.lower()) for n, *_ in tg.HPARAMS}
    check.stage("env", 0, lambda: env_stage(hp, device))
    val = tg.load_validation(hp, tg.load_tokenizer(hp.tokenizer_path, hp.vocab_size))
    if args.val_docs:  # the first documents only, each ending at the next one's BOS (its last target)
        cut = np.flatnonzero(val.tokens == tg.BOS_ID)[args.val_docs] + 1
        val = tg.ValData(val.tokens[:cut], val.target_bytes[:cut], val.byte_source)
    only = set(args.only.split(","))
    run = Run(hp, device)  # the stages after train use its model (untrained when train is not among them)
    if "train" in only:
        check.stage("train", 60, lambda: train_stage(run, check, args.steps, args.peak_tflops))
    if "error" in check.result["stages"].get("train", {}):
        print("stage:train failed; the stages that need its model are skipped", flush=True)
    elif only & {"export", "ttt", "eval", "eval_steady"}:
        check.stage("export", 30, lambda: export_stage(run, check, args.calibration_batches))
        if run.blob is not None and "ttt" in only:
            check.stage("ttt", 30, lambda: ttt_stage(run, check, val, min(args.ttt_seconds, check.left() - 60)))
        if run.blob is not None and "eval" in only:
            check.stage("eval", 45, lambda: eval_stage(run, check, val))
        if run.blob is not None and "eval_steady" in only:
            check.stage("eval_steady", 30, lambda: eval_steady_stage(run, check, val))
    run.loader.close()
    if "parity" in only:
        check.stage("parity", 15, lambda: parity_stage(hp, device))
    check.result["total_s"] = time.perf_counter() - check.t0
    check.result["projection"] = projection(check.result, full_val_lengths(val.tokens))
    check.save()
    return check.result


if __name__ == "__main__":
    main()

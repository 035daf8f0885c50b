"""1xH100 proxy: the flagship configuration (every default: shape, batch of 786,432 tokens as 8 micro-steps,
schedule, GPTQ+LQER export, phased TTT) on one GPU for a short wallclock, on the offline sample in the
flagship's data format (CaseOps sp8192 with its byte sidecar). Reports ms/step, tokens/s against the public
record's ~808,000 tokens/s per GPU, model FLOPs utilisation, peak memory, BPB before and after quantization
and after TTT, and the eval seconds by part.

The sample holds ~9M training tokens, so a GPU run repeats it many times: its BPB is of a model that has seen
the same text again and again (a smoke figure); the speed figures are the flagship's.

On the device machine (read /work/.library/device/README.md): it has torch but not brotli or zstandard, so
carry their wheels in `.whl` and the sample in `data/datasets/sample_caseops_sp8192`:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    PYTHONUNBUFFERED=1 python3 bench/gpu_proxy.py --out $OUT/gpu_proxy.json --wallclock 180

Then copy the JSON to bench/results/gpu_proxy.json and run bench/report.py. Runs on CPU too (for a smoke
check with a small configuration in the environment); MFU is then left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402
from tools.record import parse_log, run_train_gpt  # noqa: E402

RECORD_TOKENS_PER_S_PER_GPU = 786_432 / 0.1217 / 8  # the public record: 786,432 tokens per 121.7 ms step, 8 GPUs
H100_BF16_DENSE_TFLOPS = 989.4  # H100 SXM, dense bf16 tensor-core peak


def virtual_depth(hp: tg.Hyperparameters, looping: bool) -> int:
    return len(tg.virtual_layer_order(hp.num_layers, hp.loop_start, hp.loop_end, hp.num_loops if looping else 0))


def matmul_params(hp: tg.Hyperparameters, looping: bool) -> int:
    """Weights each token is multiplied by in one forward: every block matrix of every virtual layer (the
    recurrent ones once per pass), the attention gates, and the tied output head (the input lookup is no
    matmul; the SmearGate's GATE_WINDOW-long dot product is left out, as torch's FLOP counter leaves it)."""
    d, hd = hp.model_dim, hp.model_dim // hp.num_heads
    per_layer = 2 * d * d + 2 * d * hp.num_kv_heads * hd + 2 * d * int(hp.mlp_mult * d)
    per_layer += hp.num_heads * hp.gate_window if hp.sparse_attn_gate else 0
    return virtual_depth(hp, looping) * per_layer + hp.vocab_size * d


def train_flops_per_token(hp: tg.Hyperparameters, looping: bool, seq_len: int) -> float:
    """Forward + backward (3x the forward): 2 FLOPs per weight, plus causal attention, whose q.k and a.v
    products cost 2 x 2 x heads x head_dim x context per token with a mean context of seq_len / 2."""
    attention = virtual_depth(hp, looping) * 4 * hp.model_dim * seq_len / 2
    return 3 * (2 * matmul_params(hp, looping) + attention)


def summarize(log: Path, hp: tg.Hyperparameters, peak_tflops: float | None) -> dict:
    """The proxy's figures from the run's log."""
    r, text = parse_log(log), log.read_text()
    loop_on = re.search(r"^looping:on step:(\d+)", text, re.M)
    looped_steps = r.steps - int(loop_on.group(1)) if loop_on else 0
    flops = [train_flops_per_token(hp, on, hp.train_seq_len) for on in (False, True)]
    per_token = (flops[0] * (r.steps - looped_steps) + flops[1] * looped_steps) / max(r.steps, 1)
    tokens_per_s = r.train_tokens / r.train_s
    peak = re.search(r"^peak_memory_mib:(\d+)", text, re.M)
    return {
        "device": r.device, "torch": r.torch_version, "steps": r.steps, "step_avg_ms": r.step_avg_ms,
        "train_tokens": r.train_tokens, "train_s": r.train_s, "tokens_per_s": tokens_per_s,
        "vs_record_tokens_per_s_per_gpu": tokens_per_s / RECORD_TOKENS_PER_S_PER_GPU,
        "train_flops_per_token": per_token, "looped_steps": looped_steps,
        "mfu": per_token * tokens_per_s / (peak_tflops * 1e12) if peak_tflops else None,
        "peak_memory_mib": int(peak.group(1)) if peak else None,
        "stages": r.stages, "model_bytes": r.model_bytes, "artifact_bytes": r.artifact_bytes,
        "eval_s": r.eval_s, "eval_parts": r.eval_parts,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--wallclock", type=float, default=180.0, help="MAX_WALLCLOCK_SECONDS of the run")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "datasets" / "sample_caseops_sp8192")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    ap.add_argument("--logdir", type=Path, help="keep the run's log and artifact here (default: a temporary folder)")
    args = ap.parse_args()
    env = {"DATA_PATH": str(args.data), "TOKENIZER_PATH": str(args.data / "tokenizer.model"), **os.environ,
           "MAX_WALLCLOCK_SECONDS": str(args.wallclock), "RUN_ID": "gpu_proxy"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        env["LOG_DIR"] = str(args.logdir or tmp)  # a kept folder keeps the log of a run that fails or is stopped
        result = summarize(run_train_gpt(env, capture=False), tg.Hyperparameters(env), args.peak_tflops)
    if result["device"] == "cuda":
        result["gpu"] = tg.torch.cuda.get_device_name(0)
    else:  # a CPU smoke run: the GPU's peak means nothing there
        result["mfu"] = None
    result["command"], result["date"] = "python3 " + " ".join(sys.argv), date.today().isoformat()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

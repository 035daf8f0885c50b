"""Both clocks on paper, on 8 GPUs. The eval clock by part (load, the plain pass, TTT, global SGD phases): the
tokens computed and the FLOPs, from the configuration and the validation document lengths, converted to
seconds; the compile warmup, which runs before the training clock, beside it. The training clock's artifact
production after the last step: calibration, quantization (measured) and packing (rANS, measured). And the
peak bytes TTT keeps for its backward pass at the flagship shape, counted on CPU with meta tensors. Writes
bench/results/eval_cost.json (bench/report.py renders it).

    python3 bench/eval_cost.py --out bench/results/eval_cost.json

Rates: the per-GPU rate is an input. By default it is the public record's (807,757 training tokens/s per
H100 at this model's FLOPs per token); when bench/results/gpu_check.json exists, its measured training rate
and its warmup compile times replace the assumptions (the GPU it names, not an H100: say so when quoting).
Document lengths: 50,000 drawn from the validation sample's (the full split is not on this machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_check import SAMPLE, computed_tokens, full_val_lengths, sample_val_tokens  # noqa: E402
from gpu_proxy import RECORD_TOKENS_PER_S_PER_GPU, matmul_params, train_flops_per_token  # noqa: E402

import train_gpt as tg  # noqa: E402

RECORD_COMPILE_S = 70.0  # first compiled flagship step (forward + backward) on one H200, gpu_check.json


class FusedAttentionMemory(torch.autograd.Function):
    """Stands in for flex/flash attention when counting memory: keeps what their backward keeps (q, k, v, the
    output and the row log-sum-exp), not SDPA's T x T probabilities."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:3], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def ttt_saved_bytes(hp: tg.Hyperparameters, rows: int, width: int) -> dict:
    """Bytes the autograd graph of one TTT forward keeps for its backward (bf16 activations as under autocast,
    fp32 logits), with the weights, the adapters and their AdamW state: meta tensors, nothing computed."""
    with torch.device("meta"):
        model = tg.GPT(hp).to(torch.bfloat16)
        lora = tg.LoRA(hp, hp.ttt_batch_docs, len(tg.virtual_layer_order(hp.num_layers, hp.loop_start, hp.loop_end,
                                                                          hp.num_loops)), None, "meta")  # fmt: skip
    model.looping, saved, seen = hp.num_loops > 0, [0], []
    model.requires_grad_(False)
    params = {id(p) for p in model.parameters()} | {id(p) for p in lora.parameters()}

    def pack(t):
        if id(t) not in params and not any(t is s for s in seen):
            seen.append(t)
            saved[0] += t.numel() * t.element_size()
        return t

    attend = tg.attend
    tg.attend = lambda q, k, v, layout: FusedAttentionMemory.apply(q, k, v)
    try:
        x = torch.zeros(rows, width, dtype=torch.long, device="meta")
        layout = tg.DocLayout(torch.zeros(rows, width, dtype=torch.bool, device="meta"), "meta")
        lora.rows = torch.zeros(rows, dtype=torch.long, device="meta")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, x, layout, lora).sum()
    finally:
        tg.attend = attend
    weights = sum(p.numel() * 4 for p in model.parameters())  # fp32 on the GPU; autocast makes bf16 copies too
    adapters = sum(p.numel() * 4 for p in lora.parameters()) * 4  # weights, grads, two AdamW moments
    return {"rows": rows, "width": width, "saved_activation_bytes": saved[0], "weight_bytes": weights,
            "adapter_bytes": adapters, "total_bytes": saved[0] + weights + weights // 2 + adapters}  # fmt: skip


def ttt_chunk_steps(hp: tg.Hyperparameters, lengths: np.ndarray) -> dict[int, int]:
    """Forwards (micro-steps) per TTT width bucket over the whole layout, longest documents first."""
    steps: dict[int, int] = {w: 0 for w in tg.ttt_widths(hp)}
    for i in range(0, len(lengths), hp.ttt_batch_docs):
        for step in tg.ttt_steps(hp, [(0, int(n)) for n in lengths[i : i + hp.ttt_batch_docs]]):
            per, w = tg.ttt_shape(hp, max(seg[1] for _, seg, _ in step))
            steps[w] += -(-len(step) // per)
    return steps


def eval_cost(hp: tg.Hyperparameters, lengths: np.ndarray, rate_tokens_per_s: float, compile_s: float,
              export_s: float = 0.0, gpus: int = 8) -> dict:  # fmt: skip
    """Seconds by part on `gpus` GPUs: FLOPs at the training rate (FLOPs per second = training tokens/s x the
    training FLOPs per token); a forward is a third of a training step's FLOPs. `parts` is the eval clock;
    `before_clock` the compile warmup; `artifact` what the training clock spends after its last step."""
    flops_s = rate_tokens_per_s * train_flops_per_token(hp, True, hp.train_seq_len)
    fwd = lambda width: 2 * matmul_params(hp, True) + len(tg.virtual_layer_order(
        hp.num_layers, hp.loop_start, hp.loop_end, hp.num_loops)) * 4 * hp.model_dim * width / 2  # fmt: skip
    parts: dict = {"load_s": 1.0}
    graphs = len(tg.ttt_widths(hp)) + (1 if hp.ttt_phases else 0) if hp.ttt_enabled else 1
    before = {"compile_warmup_s": graphs * compile_s, "graphs": graphs}  # on random tokens, before the clock
    artifact = {"calibration_s": hp.gptq_reserve_seconds, "export_s": export_s}
    tokens: dict = {}
    if not hp.ttt_enabled or hp.eval_diagnostics:
        n = computed_tokens(lengths, hp.eval_seq_len, hp.eval_stride)
        tokens["plain_pass"] = n
        parts["plain_pass_s"] = n * fwd(hp.eval_seq_len) / flops_s / gpus
    if hp.ttt_enabled:
        steps = ttt_chunk_steps(hp, lengths)
        ttt_tokens = sum(steps[w] * tg.ttt_shape(hp, w)[0] * w for w in steps)
        tokens["ttt"] = ttt_tokens
        parts["ttt_s"] = sum(steps[w] * tg.ttt_shape(hp, w)[0] * w * 3 * fwd(w) for w in steps) / flops_s / gpus
        bounds = [min(hp.ttt_phase_docs, len(lengths)) * k // hp.ttt_phases for k in range(1, hp.ttt_phases + 1)]
        sgd_tokens = sum(int(lengths[:n].sum()) for n in bounds)  # phase k: the first k/PHASES of the docs
        tokens["global_sgd"] = sgd_tokens
        parts["sgd_s"] = sgd_tokens * 3 * fwd(hp.ttt_context) / flops_s / gpus
        parts["ttt_forwards"] = {str(w): s for w, s in steps.items()}
    parts["total_s"] = sum(v for k, v in parts.items() if k.endswith("_s"))
    artifact["total_s"] = artifact["calibration_s"] + artifact["export_s"]
    return {"parts": parts, "before_clock": before, "artifact": artifact, "tokens": tokens,
            "rate_tokens_per_s": rate_tokens_per_s, "flops_per_s": flops_s}  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--rate", type=float, help="training tokens/s per GPU (default: the GPU check's, else the record)")
    ap.add_argument("--gpu-check", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    args = ap.parse_args(argv)
    hp = tg.Hyperparameters()  # the defaults, or what the environment sets
    lengths = full_val_lengths(sample_val_tokens(args.data))
    rate, compile_s, source = RECORD_TOKENS_PER_S_PER_GPU, RECORD_COMPILE_S, "the public record (8xH100)"
    export_s, packing = 0.0, ROOT / "bench" / "results" / "packing.json"
    pack_s = json.loads(packing.read_text()).get("serialize_wall", {}).get("rans_s", 0.0) if packing.is_file() else 0
    if args.gpu_check.is_file():  # GPTQ measured on the GPU (with brotli then: its packing is replaced by rANS's)
        gc = json.loads(args.gpu_check.read_text())
        on = gc["stages"]["train"]["looping_on"]
        rate, compile_s = on["tokens_per_s"], gc["stages"]["train"]["looping_off"]["first_step_s"]
        export_s = gc["stages"]["export"]["quantize_s"] + 2 * pack_s  # a fit round serializes twice
        source = f"measured on one {gc['stages']['env']['gpu']} ({args.gpu_check.name}, looped step)"
    if args.rate:
        rate, source = args.rate, "given on the command line"
    command = "python3 bench/eval_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "date": date.today().isoformat(), "rate_source": source,
              "compile_s_per_graph": compile_s, "val_docs": len(lengths), "val_tokens": int(lengths.sum()),
              "defaults": eval_cost(hp, lengths, rate, compile_s, export_s),
              "ttt_memory": [ttt_saved_bytes(hp, *tg.ttt_shape(hp, w)) for w in tg.ttt_widths(hp)],
              "eval_max_seconds": hp.eval_max_seconds}  # fmt: skip
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(result["defaults"]["parts"], indent=1))
    print(json.dumps([{k: (v / 2**30 if "bytes" in k else v) for k, v in m.items()} for m in result["ttt_memory"]]))
    return result


if __name__ == "__main__":
    main()

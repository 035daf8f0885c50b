"""Quantization ablation on one trained model: BPB before quantization, int6 round-to-nearest, GPTQ and
GPTQ+LQER, with the model bytes and bits per parameter of each, and each stream of quantized integers'
compressed bytes against the empirical entropy of its symbols.

Trains with the configuration in the environment (e.g. the README's CPU configuration), using the
script's own training loop, then quantizes the same EMA weights with each variant and evaluates the
rebuilt model on the validation split with the script's evaluation:

    PRESET=cpu python3 bench/quantization.py --out bench/results/quantization_cpu.json \
        [--checkpoint <file>.pt]   # saved on the first run, then reused: the variants see the same weights
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

VARIANTS = {  # name -> (overrides of the quantization knobs, GPTQ on the embedding too)
    "int6_rtn": ({"GPTQ": "0", "LQER_TOP_K": "0"}, True),
    "gptq": ({"LQER_TOP_K": "0"}, True),
    "gptq_embed_rtn": ({"LQER_TOP_K": "0"}, False),
    "gptq_embed_damp0.01": ({"LQER_TOP_K": "0", "GPTQ_EMBED_DAMP": "0.01"}, True),
    "gptq_lqer": ({}, True),
}


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical zeroth-order entropy of the values, in bits for all of them: what an ideal coder that knows
    only the value histogram would need (a context model can go below it, a dictionary coder usually not)."""
    counts = np.unique(symbols, return_counts=True)[1]
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def symbol_entropy(packed: dict, sizes: dict[str, int]) -> dict[str, dict]:
    """Per stream of quantized integers (embed / attn / mlp): symbols, their entropy in bytes over the whole
    stream and tensor by tensor, and the bytes the compressor made of the stream."""
    out = {}
    for _, arrays, meta in packed.values():
        if "q" in arrays and "cls" in meta:
            q = arrays["q"].ravel()
            s = out.setdefault(meta["cls"], {"symbols": 0, "per_tensor_bytes": 0.0, "values": []})
            s["symbols"] += q.size
            s["per_tensor_bytes"] += entropy_bits(q) / 8
            s["values"].append(q)
    for cls, s in out.items():
        s["stream_bytes"] = entropy_bits(np.concatenate(s.pop("values"))) / 8
        s["compressed_bytes"] = sizes[cls]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, help="reuse (or, if missing, save) the trained weights and Hessians")
    args = ap.parse_args()
    import os

    hp, device = tg.Hyperparameters(), torch.device("cpu")
    torch.manual_seed(hp.seed)
    sp = tg.load_tokenizer(hp.tokenizer_path, hp.vocab_size)
    val = tg.load_validation(hp, sp)
    model = tg.GPT(hp)
    optimizers = tg.build_optimizers(model, hp, 0, 1, device)
    if args.checkpoint and args.checkpoint.exists():  # a bench file of our own making, not an artifact
        stats = torch.load(args.checkpoint, weights_only=True)
        model.load_state_dict(stats.pop("state"))
    else:
        stats = tg.train(hp, model, model, optimizers, "sdpa", 0, 1, tg.grad_accum_steps(hp, 1), device, print)
        if args.checkpoint:
            torch.save({**stats, "state": model.state_dict()}, args.checkpoint)
    model.looping = hp.num_loops > 0
    n_params = sum(p.numel() for p in model.parameters())
    rows = {"prequant": {**tg.evaluate(model, val, hp, hp.eval_stride, "sdpa", device), "model_bytes": None}}
    for name, (overrides, gptq_embed) in VARIANTS.items():
        hpv = tg.Hyperparameters({**os.environ, **overrides})
        t0 = time.perf_counter()
        hessians = {k: v for k, v in stats["hessians"].items() if gptq_embed or k != "tok_emb.weight"}
        packed = tg.quantize_model(model.state_dict(), hessians if hpv.gptq else None, hpv, log=print)
        blob, sizes = tg.serialize(packed, hpv.export_compressor)
        fresh = tg.GPT(hp)
        fresh.load_state_dict(tg.dequantize_model(tg.deserialize(blob)))
        fresh.looping = model.looping
        r = tg.evaluate(fresh, val, hp, hp.eval_stride, "sdpa", device)
        rows[name] = {**r, "model_bytes": len(blob), "bits_per_param": 8 * len(blob) / n_params, "streams": sizes,
                      "quantize_s": time.perf_counter() - t0, "entropy": symbol_entropy(packed, sizes)}  # fmt: skip
        print(f"variant:{name} val_bpb:{r['val_bpb']:.8f} model_bytes:{len(blob)}", flush=True)
    result = {"params": n_params, "steps": stats["steps"], "train_tokens": stats["tokens"],
              "date": date.today().isoformat(), "variants": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"{'variant':16} {'val_bpb':>11} {'delta':>9} {'model_bytes':>12} {'bits/param':>10}")
    base = rows["prequant"]["val_bpb"]
    for name, r in rows.items():
        mb = r["model_bytes"]
        bpp = f"{r['bits_per_param']:.3f}" if mb else "-"
        print(f"{name:16} {r['val_bpb']:11.6f} {r['val_bpb'] - base:+9.5f} {mb or '-':>12} {bpp:>10}")


if __name__ == "__main__":
    main()

"""How much GPTQ's calibration Hessians (sum of x^T x over training activations) lose when the products run
faster than float32: TF32 (10-bit mantissa inputs, what train_gpt.py uses on CUDA) and bf16 inputs (7 bits),
both with float32 accumulation, emulated on CPU by rounding the inputs, against a float64 reference.

    python3 bench/hessian_precision.py --checkpoint logs/<RUN_ID>.float.pt --out bench/results/hessian_precision.json

The checkpoint is a PRESET=cpu run's float weights (the environment's configuration must match it). For each
quantized matrix: the Hessian's relative Frobenius error, and what GPTQ does with it: the layer's output error
tr((W - Q) H (W - Q)^T) under the float64 Hessian, relative to GPTQ run on the float64 Hessian itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x with its float32 mantissa rounded to `bits` bits (to nearest), as TF32 (10) or bf16 (7) hold it."""
    drop = 23 - bits
    if drop == 0:
        return x.float()
    i = x.float().contiguous().view(torch.int32)
    return ((i + (1 << (drop - 1))) & ~((1 << drop) - 1)).view(torch.float32)


def activations(hp: tg.Hyperparameters, state: dict, batches: int) -> dict[str, list[torch.Tensor]]:
    """The inputs of every quantized matrix (the head's for the embedding) over `batches` training batches."""
    model = tg.GPT(hp)
    model.load_state_dict(state)
    model.eval()
    seen: dict[str, list[torch.Tensor]] = {}
    linears = [(n + ".weight", m) for n, m in model.named_modules() if isinstance(m, tg.Linear)]
    for n, m in linears:
        m.register_forward_hook(lambda m, inp, out, n=n: seen.setdefault(n, []).append(inp[0].flatten(0, -2)))
    loader = tg.TrainLoader(hp, 0, 1, 1)
    with torch.no_grad():
        for _ in range(batches):
            for x, _ in loader.next_batch(hp.train_seq_len, torch.device("cpu")):
                h = model.hidden(x, tg.make_layout(x, "sdpa", None, hp.doc_attention))
                seen.setdefault("tok_emb.weight", []).append(h.flatten(0, -2))
    loader.close()
    return seen


def hessian(xs: list[torch.Tensor], bits: int | None) -> torch.Tensor:
    if bits is None:
        return sum(x.double().T @ x.double() for x in xs)
    return sum((round_mantissa(x, bits).T @ round_mantissa(x, bits)).double() for x in xs)


def gptq_output_error(W: torch.Tensor, H: torch.Tensor, ref: torch.Tensor, args: tuple) -> float:
    """tr(E ref E^T), E the error of GPTQ run on Hessian H (GPTQ's objective under the reference Hessian)."""
    q, scale = tg.gptq_quantize(W, H.float(), *args)
    E = (W - q * scale[:, None]).double()
    return float(torch.einsum("ij,jk,ik->", E, ref, E))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--out", type=Path, required=True)
    opts = ap.parse_args()
    hp = tg.Hyperparameters(
        {"PRESET": "cpu", "TRAIN_BATCH_TOKENS": "32768", "ATTN_BITS": "6", "MLP_BITS": "6", "EMBED_BITS": "7"}
    )
    state = torch.load(opts.checkpoint, map_location="cpu", weights_only=True)["state"]
    acts = activations(hp, state, opts.batches)
    rows, worst = [], {}
    for name, xs in sorted(acts.items()):
        W = state[name].float()
        bits_q = hp.embed_bits if name == "tok_emb.weight" else hp.attn_bits if ".attn." in name else hp.mlp_bits
        clip = (
            hp.embed_clip_sigmas
            if name == "tok_emb.weight"
            else hp.attn_clip_sigmas
            if ".attn." in name
            else hp.mlp_clip_sigmas
        )
        damp = hp.gptq_embed_damp if name == "tok_emb.weight" else hp.gptq_damp
        ref, args = hessian(xs, None), (2 ** (bits_q - 1) - 1, clip, damp)
        base = gptq_output_error(W, ref, ref, args)
        row = {"tensor": name, "tokens": sum(x.shape[0] for x in xs)}
        for label, bits in (("fp32", 23), ("tf32", 10), ("bf16", 7)):
            H = hessian(xs, bits)
            row[f"{label}_hessian_rel_err"] = float((H - ref).norm() / ref.norm())
            row[f"{label}_gptq_output_err_change"] = gptq_output_error(W, H, ref, args) / base - 1
            for key in (f"{label}_hessian_rel_err", f"{label}_gptq_output_err_change"):
                worst[key] = max(worst.get(key, 0.0), abs(row[key]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "command": "python3 bench/hessian_precision.py " + " ".join(sys.argv[1:]),
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "worst": worst,
        "tensors": rows,
    }
    opts.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(worst))


if __name__ == "__main__":
    main()

"""Packing the quantized integers: brotli q11 as the artifact does today, against the same streams regrouped by
bit plane, a static rANS coder with one frequency table per tensor (constriction), and adaptive context-model
coders (PPMd, xz); bytes against the zeroth-order entropy tensor by tensor, encode and decode seconds on one core.

Two sets of streams: the GPTQ integers of a real checkpoint (a <RUN_ID>.float.pt that train_gpt.py saved, with
the environment of its run), and flagship-shaped streams (every matrix of the default configuration filled with
values drawn from the histogram of the checkpoint matrix of the same role, so about 36M symbols, the flagship's
size). The flagship-shaped set also times the fit-to-budget export at flagship size on CPU: budget = its natural
size less the 1.04% the measured flagship was over (bench/RESULTS.md, GPU check).

    PRESET=cpu OMP_NUM_THREADS=1 python3 bench/packing.py --checkpoint logs/<run>.float.pt \
        --out bench/results/packing.json
    PRESET=cpu python3 bench/packing.py --checkpoint logs/<run>.float.pt --out bench/results/packing.json \
        --serialize-only     # adds one serialization's wall seconds and bytes, brotli against rANS
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

CLASSES = ("embed", "attn", "mlp")
FLAGSHIP_ENV: dict = {}  # the defaults (a test may shrink it)
FLAGSHIP_OVER = 16_167_528 / 16_000_000 - 1  # how far over budget the measured flagship export was


def entropy_bytes(q: np.ndarray) -> float:
    counts = np.unique(q, return_counts=True)[1]
    return float(-(counts * np.log2(counts / counts.sum())).sum() / 8)


def order1_bytes(q: np.ndarray) -> float:
    """Entropy of each value given the one before it in its row: the bound of an order-1 context model."""
    prev, cur = q[:, :-1].ravel().astype(np.int64) + 128, q[:, 1:].ravel().astype(np.int64) + 128
    joint = np.bincount(prev * 256 + cur, minlength=65536).reshape(256, 256).astype(np.float64)
    rows = joint.sum(1, keepdims=True)
    nz = joint > 0
    return float(-(joint[nz] * np.log2((joint / np.maximum(rows, 1))[nz])).sum() / 8) + entropy_bytes(q[:, 0])


def timed(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def brotli_streams(streams: dict[str, list[np.ndarray]]) -> dict:
    """Today's container: one brotli q11 stream per class, the tensors row-major one after another."""
    raw = {c: b"".join(q.tobytes() for q in qs) for c, qs in streams.items()}
    blobs, enc = timed(lambda: {c: tg.brotli.compress(r, quality=11) for c, r in raw.items()})
    back, dec = timed(lambda: {c: tg.brotli.decompress(b) for c, b in blobs.items()})
    return {"bytes": sum(map(len, blobs.values())), "per_class": {c: len(b) for c, b in blobs.items()},
            "encode_s": enc, "decode_s": dec, "exact": back == raw}  # fmt: skip


def bitplane_streams(streams: dict[str, list[np.ndarray]]) -> dict:
    """Per class, the zigzag-mapped values split into 8 bit planes, each plane packed and brotli q11 on its own."""

    def planes(qs):
        q = np.concatenate([x.ravel() for x in qs]).astype(np.int16)
        z = np.where(q < 0, -2 * q - 1, 2 * q).astype(np.uint8)
        return [np.packbits((z >> b) & 1).tobytes() for b in range(8)], z.size

    def unplanes(blobs, n):
        z = sum(np.unpackbits(np.frombuffer(tg.brotli.decompress(b), np.uint8))[:n].astype(np.uint8) << i
                for i, b in enumerate(blobs))  # fmt: skip
        return np.where(z & 1, -((z.astype(np.int16) + 1) // 2), z // 2).astype(np.int8)

    def encode():
        out = {}
        for c, qs in streams.items():
            ps, n = planes(qs)
            out[c] = ([tg.brotli.compress(p, quality=11) for p in ps], n)
        return out

    blobs, enc = timed(encode)
    back, dec = timed(lambda: {c: unplanes(b, n) for c, (b, n) in blobs.items()})
    exact = all(np.array_equal(back[c], np.concatenate([x.ravel() for x in qs])) for c, qs in streams.items())
    return {"bytes": sum(len(p) for b, _ in blobs.values() for p in b), "encode_s": enc, "decode_s": dec,
            "exact": exact}  # fmt: skip


def rans_streams(streams: dict[str, list[np.ndarray]]) -> dict:
    """Static rANS (constriction's AnsCoder), one categorical model per tensor from its value counts; the tables
    (the counts of the values from min to max, brotli-compressed together) are counted in the bytes."""
    import constriction

    def model(counts):
        return constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)

    def encode():
        tables, words = [], []
        for qs in streams.values():
            for q in qs:
                lo, hi = int(q.min()), int(q.max())
                counts = np.bincount(q.ravel().astype(np.int64) - lo, minlength=hi - lo + 1).astype(np.float64)
                coder = constriction.stream.stack.AnsCoder()
                coder.encode_reverse((q.ravel().astype(np.int32) - lo), model(counts))
                tables.append((lo, counts.astype(np.int64).tolist()))
                words.append(coder.get_compressed())
        return tg.brotli.compress(json.dumps(tables).encode(), quality=11), words

    (table, words), enc = timed(encode)

    def decode():
        out = []
        for (lo, counts), w in zip(json.loads(tg.brotli.decompress(table)), words):
            n = int(sum(counts))
            out.append(constriction.stream.stack.AnsCoder(w).decode(model(np.array(counts, np.float64)), n) + lo)
        return out

    back, dec = timed(decode)
    flat = [q.ravel() for qs in streams.values() for q in qs]
    exact = all(np.array_equal(a.astype(np.int8), b) for a, b in zip(back, flat))
    classes = [c for c, qs in streams.items() for _ in qs]
    per_class = {c: 4 * sum(w.size for w, k in zip(words, classes) if k == c) for c in streams}
    return {"bytes": len(table) + 4 * sum(w.size for w in words), "table_bytes": len(table), "encode_s": enc,
            "decode_s": dec, "exact": exact, "per_class": per_class}  # fmt: skip


def generic_streams(streams: dict[str, list[np.ndarray]], compress, decompress) -> dict:
    raw = {c: b"".join(q.tobytes() for q in qs) for c, qs in streams.items()}
    blobs, enc = timed(lambda: {c: compress(r) for c, r in raw.items()})
    back, dec = timed(lambda: {c: decompress(b) for c, b in blobs.items()})
    size = sum(len(b[0] if isinstance(b, tuple) else b) for b in blobs.values())
    return {"bytes": size, "encode_s": enc, "decode_s": dec, "exact": back == raw}


def ppmd_streams(streams: dict[str, list[np.ndarray]], order: int) -> dict:
    """PPMd var. H (pyppmd's Ppmd7 coder, 256 MiB) per class; decoded with the known length (pyppmd's one-shot
    decompress refuses streams of tens of MB)."""
    import pyppmd

    def compress(raw):
        enc = pyppmd.Ppmd7Encoder(order, 256 << 20)
        return enc.encode(raw) + enc.flush(endmark=False), len(raw)

    return generic_streams(streams, compress, lambda b: pyppmd.Ppmd7Decoder(order, 256 << 20).decode(*b))


CODER_RANS = "static rANS, table per tensor (constriction)"
CODERS = {
    "brotli q11 per class (today)": brotli_streams,
    "bit planes per class, brotli q11": bitplane_streams,
    CODER_RANS: rans_streams,
    "xz -9e per class (LZMA: adaptive binary contexts)": lambda s: generic_streams(
        s, lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress
    ),
    "PPMd order 2 per class (adaptive context model)": lambda s: ppmd_streams(s, 2),
    "PPMd order 4 per class (adaptive context model)": lambda s: ppmd_streams(s, 4),
}


def measure(streams: dict[str, list[np.ndarray]], log) -> dict:
    qs = [q for c in CLASSES for q in streams.get(c, [])]
    out = {"symbols": sum(q.size for q in qs), "entropy_per_tensor_bytes": sum(entropy_bytes(q) for q in qs),
           "order1_per_tensor_bytes": sum(order1_bytes(q) for q in qs), "coders": {}}  # fmt: skip
    for name, coder in CODERS.items():
        try:
            out["coders"][name] = r = coder(streams)
        except Exception as e:  # one coder's failure is a result, not the end of a ten-minute run
            out["coders"][name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"coder:{name!r} error:{e}")
            continue
        log(f"coder:{name!r} bytes:{r['bytes']} encode_s:{r['encode_s']:.2f} decode_s:{r['decode_s']:.2f} "
            f"exact:{r['exact']}")  # fmt: skip
    return out


def class_streams(packed: dict) -> dict[str, list[np.ndarray]]:
    out = {}
    for kind, arrays, meta in packed.values():
        if kind == "gptq":
            out.setdefault(meta["cls"], []).append(arrays["q"])
    return out


def flagship_packed(packed: dict, seed: int = 0) -> dict:
    """Every matrix of the default configuration, values and row scales drawn from the checkpoint matrix of the
    same role (layer i of 11 from layer round(i * (L - 1) / 10) of the checkpoint's L)."""
    hp = tg.Hyperparameters(FLAGSHIP_ENV)
    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in tg.GPT(hp).state_dict().items()}
    src_layers = 1 + max(int(m.group(1)) for n in packed if (m := re.match(r"blocks\.(\d+)\.", n)))
    rng, out = np.random.default_rng(seed), {}
    for name, shape in shapes.items():
        if tg.quant_class(name) is None:
            continue
        m = re.match(r"blocks\.(\d+)\.(.*)", name)
        src = f"blocks.{round(int(m.group(1)) * (src_layers - 1) / (hp.num_layers - 1))}.{m.group(2)}" if m else name
        kind, arrays, meta = packed[src]
        values, counts = np.unique(arrays["q"], return_counts=True)
        cdf = np.cumsum(counts) / counts.sum()
        q = values[np.minimum(np.searchsorted(cdf, rng.random(shape)), len(values) - 1)].astype(np.int8)
        scale = rng.choice(arrays["scale"], shape[0])
        out[name] = ("gptq", {"q": q, "scale": scale}, meta)
    return out


def fit_timing(packed: dict, log) -> dict:
    """fit_to_budget on the flagship-shaped model, budget = natural size / (1 + FLAGSHIP_OVER); Hessian diagonals
    of ones (the timing does not depend on them); serialization timed apart from the fit's own work."""
    hp = tg.Hyperparameters({})
    spent = {"serialize_s": 0.0, "serializations": 0}
    real = tg.serialize

    def counting(p, method, run=None):
        t0 = time.process_time()
        r = real(p, method, run)
        spent["serialize_s"] += time.process_time() - t0
        spent["serializations"] += 1
        return r

    natural = len(real(packed, hp.export_compressor)[0])
    hp.artifact_max_bytes = int(natural / (1 + FLAGSHIP_OVER))
    hessians = {n: torch.eye(a["q"].shape[1]) for n, (_, a, _) in packed.items()}
    state = tg.dequantize_model(packed)  # the float weights coarsen would refit LQER to (these have none)
    tg.serialize = counting
    try:
        lines = []
        (blob, _), total = timed(tg.fit_to_budget, packed, state, hessians, hp, 0, lambda x: lines.append(x) or log(x))
    finally:
        tg.serialize = real
    return {"natural_bytes": natural, "budget_bytes": hp.artifact_max_bytes, "fitted_bytes": len(blob),
            "total_s": total, "fit_s_without_serialize": total - spent["serialize_s"], **spent,
            "est_err_total": float(re.findall(r"est_err_total:(\S+)", "\n".join(lines))[-1]),
            "matrices_coarsened": int(re.findall(r"matrices_coarsened:(\d+)", "\n".join(lines))[-1])}  # fmt: skip


def serialize_wall(packed: dict) -> dict:
    """Wall seconds and bytes of the artifact's own serialize() on the flagship-shaped model, every stream by brotli
    (as until 2026-12, on the eval clock) against the integer classes by rANS (EXPORT_COMPRESSOR=rans, the default),
    each with the load that reads it back; the rANS round trip must be exact."""
    cpu = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)[:1] or ["?"]
    out = {"cores": os.cpu_count(), "cpu": cpu[0], "date": date.today().isoformat()}
    for method in ("brotli", "rans"):
        (blob, _), out[f"{method}_s"] = timed(tg.serialize, packed, method)
        back, out[f"{method}_load_s"] = timed(tg.deserialize, blob)
        out[f"{method}_bytes"] = len(blob)
        out[f"{method}_exact"] = all(np.array_equal(back[n][1][k], a) for n, (_, arrays, _) in packed.items()
                                     for k, a in arrays.items())  # fmt: skip
    return out


PROJECTION = {  # configuration -> env overrides of the defaults: what the bytes could buy instead
    "defaults": {},
    "EMBED_BITS=6": {"EMBED_BITS": "6"},
    "ATTN_BITS=7 (an int7 class)": {"ATTN_BITS": "7"},
    "MLP_MULT=3.75": {"MLP_MULT": "3.75"},
    "MLP_MULT=4.25": {"MLP_MULT": "4.25"},
    "NUM_LAYERS=10": {"NUM_LAYERS": "10", "XSA_LAST_N": "10", "PARALLEL_START_LAYER": "7"},
    "NUM_LAYERS=12": {"NUM_LAYERS": "12", "XSA_LAST_N": "12", "PARALLEL_START_LAYER": "9"},
}


def class_params(env: dict) -> dict:
    hp = tg.Hyperparameters(env)
    with torch.device("meta"):
        state = tg.GPT(hp).state_dict()
    out = {c: 0 for c in (*CLASSES, "rows")}
    for name, t in state.items():
        if tg.quant_class(name):
            out[tg.quant_class(name)] += t.numel()
            out["rows"] += t.shape[0]
    out["bits"] = {c: getattr(hp, f"{c}_bits") for c in CLASSES}
    out["params"] = sum(t.numel() for t in state.values())
    return out


def projection(gpu_export: dict, rans_gain: dict[str, float]) -> dict:
    """Model bytes of each PROJECTION configuration from the measured flagship streams (GPU check): each class at
    its measured bits per parameter (+1 per extra bit: a grid twice as fine at the same clip adds one bit of
    entropy), header and `rest` scaled with the number of quantized rows; code = the packed train_gpt.py."""
    from tools import pack
    from tools.record import BUDGET_BYTES

    base = class_params({})
    bpp = {c: 8 * gpu_export["streams"][c] / base[c] for c in CLASSES}
    fixed = gpu_export["streams"]["header"] + gpu_export["streams"]["rest"]
    code = {"source": len((tg.Path(tg.__file__)).read_bytes()),
            "packed": len(pack.pack(tg.Path(tg.__file__).read_text()))}  # fmt: skip
    rows = {}
    for name, env in PROJECTION.items():
        p = class_params(env)
        streams = {c: p[c] * (bpp[c] + p["bits"][c] - base["bits"][c]) / 8 for c in CLASSES}
        other = fixed * p["rows"] / base["rows"]
        rows[name] = {"params": p["params"], "brotli": sum(streams.values()) + other,
                      "rans": sum(streams[c] * rans_gain[c] for c in CLASSES) + other}  # fmt: skip
    return {"bits_per_param": bpp, "code": code, "configs": rows, "budget": BUDGET_BYTES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a <RUN_ID>.float.pt saved by train_gpt.py")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-flagship", action="store_true", help="the checkpoint's streams only")
    ap.add_argument("--serialize-only", action="store_true", help="time serialize() alone, into --out's JSON")
    args = ap.parse_args()
    hp = tg.Hyperparameters()
    ckpt = torch.load(args.checkpoint, weights_only=True)
    packed = tg.quantize_model(ckpt["state"], ckpt["hessians"], hp, log=print)
    if args.serialize_only:  # the rest of the JSON as it was
        result = json.loads(args.out.read_text())
        bits = {c: getattr(hp, f"{c}_bits") for c in CLASSES}  # the flagship's are 6, 6, 7 (attn, mlp, embed)
        result["serialize_wall"] = {**serialize_wall(flagship_packed(packed)), "bits": bits}
        result["serialize_checkpoint"] = serialize_wall(packed)  # the trained checkpoint's own tensors
        print(f"serialize_wall:{result['serialize_wall']}")
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        return tmp.replace(args.out)
    result = {"date": date.today().isoformat(), "torch_threads": torch.get_num_threads(),
              "checkpoint": {"params": sum(t.numel() for t in ckpt["state"].values()),
                             "streams": measure(class_streams(packed), print)}}  # fmt: skip
    if not args.no_flagship:
        flag = flagship_packed(packed)
        result["flagship_shaped"] = {"params": sum(a["q"].size for _, a, _ in flag.values()),
                                     "streams": measure(class_streams(flag), print)}  # fmt: skip
        result["fit_to_budget"] = fit_timing(flag, print)
        print(f"fit_to_budget:{result['fit_to_budget']}")
        gpu = json.loads((Path(__file__).parent / "results" / "gpu_check.json").read_text())["stages"]["export"]
        coders = result["flagship_shaped"]["streams"]["coders"]
        b, r = (coders[k]["per_class"] for k in ("brotli q11 per class (today)", CODER_RANS))
        result["projection"] = projection(gpu, {c: r[c] / b[c] for c in CLASSES})
        print(f"projection:{result['projection']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()

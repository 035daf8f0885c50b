"""Cheaper steps, same results: Muon's all_gather exchange over 2 and 4 gloo ranks against one process, and the
GPTQ Hessian that c_q, c_k and c_v share."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import train_gpt as tg
from tests.helpers import randomize, tiny_hp

CPU = torch.device("cpu")
SHAPES = [(32, 16), (16, 32), (32, 16), (48, 16), (24, 24), (32, 16), (16, 32)]  # batched, tall (x3), wide, square
ALL_GATHER = dist.all_gather_into_tensor


def _muon_run(rank: int, world: int, bf16: bool) -> tuple[list[torch.Tensor], list]:
    """Three Muon steps on fixed matrices and gradients; the sends of every all_gather (numel, dtype)."""
    gen = torch.Generator().manual_seed(5)
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) * torch.logspace(-2, 1, s[0])[:, None] for s in SHAPES] for _ in range(3)]
    opt = tg.Muon(params, 0.05, 0.9, 0.1, 5, tg.POLAR_EXPRESS, 1, rank, world)
    sent = []
    if world > 1:
        dist.all_gather_into_tensor = lambda out, inp: sent.append((inp.numel(), inp.dtype)) or ALL_GATHER(out, inp)
        dist.all_reduce = None  # Muon no longer all-reduces: calling it fails
    if bf16:  # the CUDA numerics: Newton-Schulz, and so the exchange, in bf16
        tg.ns_dtype = lambda device: torch.bfloat16
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    return [p.detach().clone() for p in params], sent


def _muon_worker(rank: int, world: int, init_file: str, out_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {bf16: _muon_run(rank, world, bf16) for bf16 in (False, True)}
    if rank == 0:
        torch.save(results, out_file)
    dist.barrier()  # all is written: leave without interpreter teardown, where gloo ranks sometimes abort
    os._exit(0)


@pytest.mark.parametrize("world", [2, 4])
def test_muon_over_gloo_ranks_equals_one_process(world, tmp_path, monkeypatch):
    """Each rank orthogonalises every world-th matrix and one all_gather shares the updates, in the dtype Newton-Schulz
    ran in (float32 on CPU; bf16 as on CUDA): the parameters equal one process's up to float noise (1e-6), since the
    exchanged values are exactly those a single process applies. Each rank sends one padded share, never all."""
    out = tmp_path / "rank0.pt"
    mp.spawn(_muon_worker, args=(world, str(tmp_path / "init"), str(out)), nprocs=world, join=True)
    results = torch.load(out)
    for bf16 in (False, True):
        monkeypatch.setattr(tg, "ns_dtype", tg.ns_dtype)  # _muon_run patches it for bf16; undone here
        expected, _ = _muon_run(0, 1, bf16)
        got, sent = results[bf16]
        for p, q in zip(got, expected):
            assert torch.allclose(p, q, rtol=0, atol=1e-6), (world, bf16, (p - q).abs().max())
        sizes = [math.prod(s) for s in sorted(SHAPES)]  # Muon's order; rank r takes every world-th matrix
        share = max(sum(sizes[r::world]) for r in range(world))
        assert sent == [(share, torch.bfloat16 if bf16 else torch.float32)] * 3  # one padded share per step


def test_qkv_share_one_hessian_equal_to_each_ones_own_input_sum(small_dataset):
    hp = tiny_hp(DATA_PATH=small_dataset, GPTQ_CALIBRATION_BATCHES=2)
    model = randomize(tg.GPT(hp), std=0.05)
    model.looping = True
    own = {}

    def record(name, x):
        x = x.flatten(0, -2)
        own[name] = own.get(name, 0) + x.T @ x

    hooks = [m.register_forward_hook(lambda m, inp, out, n=n: record(n + ".weight", inp[0]))
             for n, m in model.named_modules() if n.endswith((".c_k", ".c_v"))]  # fmt: skip
    loader = tg.TrainLoader(hp, 0, 1, 1)
    H, batches = tg.collect_hessians(model, loader, hp, hp.train_seq_len, math.inf, "sdpa", CPU, 1)
    loader.close()
    for h in hooks:
        h.remove()
    assert batches == 2 and sorted(H) == sorted(n for n in model.state_dict() if tg.quant_class(n))
    for i in range(hp.num_layers):
        q = H[f"blocks.{i}.attn.c_q.weight"]
        for other in ("c_k", "c_v"):
            assert H[f"blocks.{i}.attn.{other}.weight"] is q  # one sum, three names
            assert torch.allclose(own[f"blocks.{i}.attn.{other}.weight"], q, rtol=1e-5, atol=1e-4)
    before = {n: h.clone() for n, h in H.items()}
    tg.quantize_model(model.state_dict(), H, hp, log=lambda _: None)
    assert all(torch.equal(H[n], before[n]) for n in H), "quantization must not mutate a (shared) Hessian"

"""Helpers shared by the train_gpt.py tests: a toy-sized configuration and non-trivial weights."""

import torch
from torch import nn

import train_gpt as tg

TINY = {  # the architecture of the flagship at toy size: every technique on
    "VOCAB_SIZE": "1024",
    "NUM_LAYERS": "6",
    "MODEL_DIM": "64",
    "NUM_HEADS": "4",
    "NUM_KV_HEADS": "2",
    "ROPE_DIMS": "8",
    "LOOP_START": "2",
    "LOOP_END": "3",
    "PARALLEL_START_LAYER": "4",
    "XSA_LAST_N": "6",
    "TRAIN_SEQ_LEN": "64",
    "EVAL_SEQ_LEN": "128",
    "EVAL_STRIDE": "32",
    "TRAIN_BATCH_TOKENS": "512",
    "GRAD_ACCUM_STEPS": "1",
    "WARMUP_STEPS": "0",
    "MAX_WALLCLOCK_SECONDS": "0",
    "VAL_BATCH_SIZE": "4096",
    "ITERATIONS": "4",
    "TRAIN_LOG_EVERY": "1",
    "TTT_ENABLED": "0",  # the TTT tests switch it on, on short documents
    "TTT_LORA_RANK": "4",
    "TTT_CHUNK": "16",
    "TTT_BATCH_DOCS": "3",
}


def tiny_hp(**overrides) -> tg.Hyperparameters:
    """TINY with overrides (env-var names, any values, converted to strings)."""
    return tg.Hyperparameters({**TINY, **{k: str(v) for k, v in overrides.items()}})


def train_tiny(data_path, steps: int):
    """(hp, model, loader): the toy configuration trained `steps` steps on real text, looping on; the loader is
    left open (callers may read more training batches, then close it)."""
    hp = tiny_hp(DATA_PATH=data_path)
    torch.manual_seed(0)
    model = tg.GPT(hp)
    model.looping = True
    optimizers = tg.build_optimizers(model, hp, 0, 1, torch.device("cpu"))
    loader = tg.TrainLoader(hp, 0, 1, 1)
    for _ in range(steps):
        tg.train_step(model, model, optimizers, loader, hp.train_seq_len, "sdpa", hp, 1, torch.device("cpu"))
    return hp, model, loader


def randomize(model: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Every parameter small random normal, so zero-initialised projections and gates do something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model

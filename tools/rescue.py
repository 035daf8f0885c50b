"""Offline rescue of a run: re-export and score its float checkpoint (<RUN_ID>.float.pt, which train_gpt.py
saves before quantizing) without training. Not a record run: its calibration ran outside the training clock,
and the log says so (`record_run:no`). Run it with the environment of the run (the shape comes from it):

    python3 tools/rescue.py logs/<RUN_ID>.float.pt      # RUN_ID and LOG_DIR name the new log and artifact
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

import train_gpt as tg  # noqa: E402


def load_checkpoint(path: str, model: tg.GPT, device) -> tuple[dict, dict | None]:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["state"])  # refuses a checkpoint of another shape
        return ckpt["state"], ckpt["hessians"]
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        first = "not a checkpoint of tensors" if isinstance(e, pickle.UnpicklingError) or not first else first
        raise tg.ArtifactError(
            f"{path}: expected a <RUN_ID>.float.pt of the model this env describes ({first})"
        ) from None


def rescue(path: str):
    hp = tg.Hyperparameters()
    rank, world, _, device = tg.setup_distributed()
    log = tg.Logger(hp, rank)
    try:
        rescue_into(path, hp, rank, world, device, log)
    except tg.RUN_ERRORS as e:
        log(f"error: {e}", console=False)  # the log says how it ended, as train_gpt.py's do
        raise


def rescue_into(path: str, hp, rank: int, world: int, device, log):
    log(f"rescue_checkpoint:{path} record_run:no")
    val = tg.load_validation(hp, tg.load_tokenizer(hp.tokenizer_path, hp.vocab_size))
    backend, model = tg.pick_backend(hp.attn_backend, device), tg.GPT(hp).to(device)
    clock, (state, hessians) = tg.EvalClock(log), load_checkpoint(path, model, device)
    code = len((ROOT / "train_gpt.py").read_bytes())  # the counted code of the run, as its export saw it
    blob, _ = tg.from_rank0(lambda: tg.export_artifact(state, hessians, hp, code, log), rank, world)
    clock.finish(hp, tg.score_artifact(blob, hp, val, backend, rank, world, device, log, clock), world)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 tools/rescue.py <RUN_ID>.float.pt")
    try:
        rescue(sys.argv[1])
    except tg.RUN_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

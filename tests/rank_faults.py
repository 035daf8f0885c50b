"""train_gpt.py under torchrun with a fault on one rank, for tests/test_ranks.py (not a test module itself).

PG_FAULT=sleep:RANK:SECONDS slows every training step of one rank, so that its own clock runs behind the others';
PG_FAULT=raise:RANK:STEP makes one rank's training data fail at that step, as a shard damaged on one host would.
Each rank writes to PG_FAULT_OUT/rank<R>.json what it trained and scored: the sha256 of its weights when training
ended, of the artifact bytes it scored, and its schedule switches (the log keeps only rank 0's lines).
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

RANK = int(os.environ.get("RANK", 0))
KIND, WHO, ARG = os.environ.get("PG_FAULT", "none:-1:0").split(":")
SEEN: dict = {"switches": []}


def save():
    Path(os.environ["PG_FAULT_OUT"], f"rank{RANK}.json").write_text(json.dumps(SEEN))


def state_sha(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def wrap(name: str, after):
    original = getattr(tg, name)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        after(args, out)
        return out

    setattr(tg, name, wrapped)


if KIND == "sleep" and int(WHO) == RANK:
    step = tg.train_step
    tg.train_step = lambda *a, **k: (time.sleep(float(ARG)), step(*a, **k))[1]
if KIND == "raise" and int(WHO) == RANK:
    batches, next_batch = [0], tg.TrainLoader.next_batch

    def failing(self, *a, **k):
        batches[0] += 1
        if batches[0] == int(ARG):
            raise tg.DataError("fineweb_train_000000.bin: damaged on this host (injected)")
        return next_batch(self, *a, **k)

    tg.TrainLoader.next_batch = failing

log_call = tg.Logger.__call__


def logged(self, msg, console=True):
    if isinstance(msg, str) and msg.startswith(("looping:on", "seq_len_change:", "stopping_early")):
        SEEN["switches"].append(msg.split(" train_time_ms")[0])
    return log_call(self, msg, console)


tg.Logger.__call__ = logged
wrap("train", lambda args, out: SEEN.update(weights=state_sha(args[1]), steps=out["steps"]))
wrap("score_artifact", lambda args, out: (SEEN.update(blob=hashlib.sha256(args[0]).hexdigest(), finals=out), save()))

if __name__ == "__main__":
    tg.entry()

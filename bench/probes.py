"""Hostile review of issues 20 and 32: about sixty-five bad inputs and faults, each run on a tiny configuration and
its outcome classified from what the process printed and left behind.

    python3 bench/probes.py [--repo PATH] [--only NAME ...] [--out bench/results/probes.json]

Outcomes:
  error      the fault was handled: nonzero exit, the last stderr line is one line in the tool's failure format
             (`error: ...`, data/verify.py's `verify:FAILED ...`) naming what was wrong (the probe's regex), no
             traceback, and the same error is the last `error:` line of LOG_DIR/<RUN_ID>.txt when the run opened
             its log. Some probes state another good outcome (below: `good`), e.g. exit 130 after SIGINT.
  traceback  a Python traceback was printed.
  silent     exit 0 although the input was bad (the final score's coverage of the validation targets is in the
             message), or a failure without a clear message, an error that does not name the fault, or a good
             outcome's required file missing.
  hang       no result before the probe's timeout (the process group is killed).

Train runs use PRESET=smoke shrunk further (4 steps, 3 s cap). Fixtures (corrupted copies of the sample data, three
tiny training runs whose artifacts and logs the EVAL_ONLY and tools/record.py probes share) are built once in a
temporary folder, only for the probes selected. Every child process gets an address-space limit (--mem-gb), so a
probe that allocates a dense T^2 attention mask fails there instead of exhausting a shared machine. One probe runs
at a time.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.record import this_machine as cpu_and_cores  # noqa: E402

OUTCOMES = ("error", "traceback", "silent", "hang")
BASE = {"PRESET": "smoke", "MAX_WALLCLOCK_SECONDS": "3", "ITERATIONS": "4"}  # smoke, shrunk: about 10 s a run
KEEP_ENV = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "VIRTUAL_ENV", "PYTHONPATH", "PG_SHARED_DATA"}
TRACEBACK = "Traceback (most recent call last)"
SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
COMPRESSOR_ORDER = ("brotli", "zlib")  # train_gpt.COMPRESSORS: the artifact stores the index


class FixtureError(RuntimeError):
    """A fixture could not be built; outcome and message say how its run ended."""

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome


# -----------------------------------------------------------------------------
# Classification: from what a run printed and left, never from what it was meant to do
# -----------------------------------------------------------------------------
def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def last_error_line(log: str) -> str | None:
    lines = [line.strip() for line in log.splitlines() if line.startswith("error:")]
    return lines[-1] if lines else None


def coverage(log: str) -> str:
    """What the final score covered, from the log: scored targets and bytes against the validation set's."""
    val = re.search(r"^val_tokens:(\d+) val_docs:(\d+) val_bytes:(\d+)", log, re.M)
    evals = re.findall(r"^(\w+)_eval .*?\btokens:(\d+)\b.*?\bbytes:(\d+)", log, re.M)
    finals = re.findall(r"^final_(\w+)_exact val_loss:\S+ val_bpb:(\S+)", log, re.M)
    if not val or not evals:
        return "no evaluation in the log"
    want_t, want_b = int(val.group(1)) - 1, int(val.group(3))  # every token after the first is a target
    stage, got_t, got_b = evals[-1]
    whole = int(got_t) == want_t and int(got_b) == want_b
    score = f", val_bpb {finals[-1][1]}" if finals else ""
    return (f"{stage} scored {'all ' if whole else 'only '}{got_t} of {want_t} targets, {got_b} of {want_b} "
            f"bytes{score}")  # fmt: skip


def classify(
    rc: int | None,
    out: str,
    err: str,
    *,
    expect: str = "",
    prefixes=("error:",),
    log: str | None = None,
    timed_out: bool = False,
    timeout: float = 0,
    interrupt: bool = False,
) -> tuple[str, str]:
    """(outcome, message) of one run. log: the run's LOG_DIR/<RUN_ID>.txt when this run opened it, else None.
    interrupt: the good outcome is exit 130 with the log's last line `error: interrupted; kept: ...`."""
    if timed_out:
        return "hang", f"no result after {timeout:g} s; last output: {last_line(err) or last_line(out) or '(none)'}"
    if TRACEBACK in out or TRACEBACK in err:
        return "traceback", last_line(err) or last_line(out)
    if interrupt:
        end = last_line(log) if log else ""
        if rc == 130 and end.startswith("error: interrupted; kept:"):
            return "error", end
        return "silent", f"exit {rc}; log ends: {end or '(no log)'}"
    if rc == 0:
        return "silent", f"exit 0: bad input accepted; {coverage(log) if log else 'last output: ' + last_line(out)}"
    msg = last_line(err)
    if not msg.startswith(tuple(prefixes)):
        return "silent", f"exit {rc} without a one-line error; last line: {msg or last_line(out) or '(none)'}"
    if expect and not re.search(expect, msg):
        return "silent", f"the error does not name the fault (expects /{expect}/): {msg}"
    if log is not None and msg.startswith("error:") and last_error_line(log) != msg:
        return "silent", f"the log does not end with the error (its last error line: {last_error_line(log)}): {msg}"
    return "error", msg


# -----------------------------------------------------------------------------
# Running one command: its own process group, a memory cap, a timeout
# -----------------------------------------------------------------------------
@dataclass
class Run:
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool
    note: str = ""  # e.g. when a signal was sent


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any knob of train_gpt.py (only the basics kept), plus extra."""
    env = {k: v for k, v in os.environ.items() if k in KEEP_ENV or k.startswith(("LC_", "OMP_", "MKL_"))}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def run_command(argv: list[str], env: dict[str, str], cwd: Path, workdir: Path, timeout: float, mem_gb: float,
                send: int | None = None, after: str = r"^step:[2-9]") -> Run:  # fmt: skip
    """Runs argv with stdout/stderr in files under workdir. send: a signal for the process group once stdout
    matches `after` (training has begun), as Ctrl-C or a scheduler's stop would arrive."""
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    cap = int(mem_gb * 2**30)

    def limit():
        if cap > 0:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    note, t0 = "", time.monotonic()
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=limit)  # fmt: skip
        if send is not None:
            note = f"signal {signal.Signals(send).name} not sent: no line /{after}/ before the run ended"
            while p.poll() is None and time.monotonic() - t0 < timeout:
                if re.search(after, out_path.read_text(errors="replace"), re.M):
                    os.killpg(p.pid, send)
                    note = f"sent {signal.Signals(send).name} at {time.monotonic() - t0:.1f} s"
                    break
                time.sleep(0.2)
        try:
            rc, timed_out = p.wait(timeout=max(0.0, timeout - (time.monotonic() - t0))), False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc, timed_out = None, True
    seconds = time.monotonic() - t0
    read = lambda path: path.read_text(errors="replace")
    return Run(rc, read(out_path), read(err_path), seconds, timed_out, note)


# -----------------------------------------------------------------------------
# Fixtures: data copies, tokenizers, artifacts and logs, built once in a temporary folder
# -----------------------------------------------------------------------------
def read_tokens(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<u2", offset=4 * HEADER_INTS)


def shard_bytes(tokens, magic: int = SHARD_MAGIC, count: int | None = None) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = magic, SHARD_VERSION, len(tokens) if count is None else count
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


class Fixtures:
    """Lazily built, cached: each is made the first time a selected probe asks for it."""

    def __init__(self, repo: Path, tmp: Path, sample: Path, caseops: Path, shared: Path, mem_gb: float, log):
        self.repo, self.tmp, self.sample, self.caseops, self.shared = repo, tmp, sample, caseops, shared
        self.mem_gb, self.log, self.cache, self.seconds = mem_gb, log, {}, 0.0

    def once(self, key: str, build: Callable[[], object]):
        if key not in self.cache:
            t0 = time.monotonic()
            try:
                self.cache[key] = build()
            except FixtureError as e:
                self.cache[key] = e
            self.seconds += time.monotonic() - t0
        if isinstance(self.cache[key], FixtureError):
            raise self.cache[key]
        return self.cache[key]

    # data -----------------------------------------------------------------
    def dataset(self, name: str, val=None, train=None, extra: dict | None = None, source: Path | None = None,
                rehash: bool = False) -> str:  # fmt: skip
        """A copy of the sample folder (or source) with the tokenizer and manifest; val/train: {file: bytes} to
        write instead of the sample's shards (None: the sample's, the train shard as a symlink). rehash: the
        manifest lists the validation files now there with their sha256 (a dataset rebuilt around them)."""

        def build():
            src, out = source or self.sample, self.tmp / "data" / name
            out.mkdir(parents=True)
            for f in ("tokenizer.model", "manifest.json"):
                if (src / f).is_file():
                    shutil.copy(src / f, out / f)
            for kind, given in (("val", val), ("train", train)):
                if given is None:
                    for p in sorted(src.glob(f"fineweb_{kind}_[0-9]*.bin")):
                        if kind == "train":  # large and never changed: shared
                            (out / p.name).symlink_to(p.resolve())
                        else:
                            shutil.copy(p, out / p.name)
                else:
                    for f, data in given.items():
                        (out / f).write_bytes(data)
            for f, data in (extra or {}).items():
                (out / f).write_bytes(data)
            if rehash:
                m = json.loads((out / "manifest.json").read_text())
                kept = {k: v for k, v in m["shards"].items() if not k.startswith("fineweb_val_")}
                m["shards"] = {**kept, **{p.name: {"tokens": (p.stat().st_size - 4 * HEADER_INTS) // 2,
                                                   "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                          for p in sorted(out.glob("fineweb_val_*.bin"))}}  # fmt: skip
                (out / "manifest.json").write_text(json.dumps(m, indent=1))
            return str(out)

        return self.once(f"data:{name}", build)

    def val_tokens(self) -> np.ndarray:
        return self.once("val_tokens", lambda: read_tokens(self.sample / "fineweb_val_000000.bin"))

    def val(self, tokens, **kw) -> dict:
        return {"fineweb_val_000000.bin": shard_bytes(tokens, **kw)}

    def train_head(self, n: int) -> np.ndarray:
        return np.fromfile(self.sample / "fineweb_train_000000.bin", dtype="<u2", count=n, offset=4 * HEADER_INTS)

    def tiny_val(self) -> str:
        """The sample with only the first validation document (a few hundred tokens)."""
        t = self.val_tokens()
        return self.dataset("tiny_val", val=self.val(t[: int(np.flatnonzero(t == 1)[1])]), rehash=True)

    def changed_token(self) -> tuple[np.ndarray, int]:
        """The validation tokens with one in-vocabulary id changed (a word piece to its neighbour)."""
        t = self.val_tokens().copy()
        i = int(np.flatnonzero(t > 300)[100])
        t[i] = t[i] + 1 if t[i] < 1000 else t[i] - 1
        return t, i

    # tokenizers -----------------------------------------------------------
    def shared_file(self, name: str) -> str:
        path = self.shared / name
        if not path.is_file():
            raise FixtureError("silent", f"fixture: {path} missing (shared data; PG_SHARED_DATA)")
        return str(path)

    def text_file(self, name: str, text: str) -> str:
        def build():
            path = self.tmp / "files" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return str(path)

        return self.once(f"file:{name}", build)

    # training runs --------------------------------------------------------
    def sample_env(self) -> dict[str, str]:
        return {"DATA_PATH": str(self.sample), "TOKENIZER_PATH": str(self.sample / "tokenizer.model")}

    def train(self, name: str, env: dict[str, str]) -> Path:
        """A finished tiny run of the repository under test: LOG_DIR/<name>.{txt,ptz,float.pt}."""

        def build():
            logs = self.tmp / "fixtures" / "logs"
            full = {**BASE, **self.sample_env(), "LOG_DIR": str(logs), "RUN_ID": name, **env}
            self.log(f"fixture:{name} training ({' '.join(f'{k}={v}' for k, v in env.items()) or 'base'})")
            r = run_command([sys.executable, "train_gpt.py"], child_env(full), self.repo, self.tmp / "fixtures" / name,
                            300, self.mem_gb)  # fmt: skip
            if r.timed_out or r.rc != 0 or not (logs / f"{name}.ptz").is_file():
                outcome, msg = classify(r.rc, r.out, r.err, timed_out=r.timed_out, timeout=300)
                raise FixtureError(outcome if outcome != "error" else "silent", f"fixture run {name} failed: {msg}")
            return logs / name

        return self.once(f"train:{name}", build)

    def run_a(self) -> Path:  # the artifact every EVAL_ONLY probe starts from
        return self.train("fxA", {"SEED": "1337"})

    def run_wide(self) -> Path:  # another width, another seed
        return self.train("fxB", {"SEED": "2", "MODEL_DIM": "96"})

    def run_sliding(self) -> Path:  # the same shape scored with a sliding window, another seed
        return self.train("fxC", {"SEED": "3", "EVAL_STRIDE": "64"})

    def artifact(self, name: str, damage: Callable[[bytes], bytes]) -> str:
        def build():
            path = self.tmp / "files" / f"{name}.ptz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(damage(self.run_a().with_suffix(".ptz").read_bytes()))
            return str(path)

        return self.once(f"artifact:{name}", build)


def undecodable_stream(blob: bytes) -> bytes:
    """The artifact with its last stream replaced by random bytes, its checksum (in the compressed header) fixed:
    what a reader sees when the checksum passes but the compressed data is not a valid stream."""
    decompress, compress = codec(blob[4])
    n = struct.unpack("<I", blob[5:9])[0]
    header = json.loads(decompress(blob[13 : 13 + n]))
    name, clen, _, *rest = header["streams"][-1]  # rest: the raw length (and since rANS, the coder's tables)
    junk = random.Random(20).randbytes(clen)
    header["streams"][-1] = [name, clen, zlib.crc32(junk), *rest]
    head = compress(json.dumps(header).encode())
    return blob[:5] + struct.pack("<II", len(head), zlib.crc32(head)) + head + blob[13 + n : len(blob) - clen] + junk


def codec(index: int):
    name = COMPRESSOR_ORDER[index]
    if name == "brotli":
        import brotli

        return brotli.decompress, lambda b: brotli.compress(b, quality=11)
    return zlib.decompress, zlib.compress


def flip_byte_near_end(blob: bytes) -> bytes:
    b = bytearray(blob)
    b[len(b) - 100] ^= 0xFF
    return bytes(b)


# -----------------------------------------------------------------------------
# The probes
# -----------------------------------------------------------------------------
@dataclass
class Probe:
    name: str
    what: str  # the fault, in words
    env: dict[str, str] = field(default_factory=dict)  # train probes: on top of BASE and the sample
    expect: str = ""  # regex the error message must match: it names what was wrong
    setup: Callable | None = None  # (fixtures, probe dir) -> env overrides; tools: {"argv": [...], "env": {...}}
    tool: bool = False  # a command of the repository other than a training run (argv and env from setup)
    prefixes: tuple[str, ...] = ("error:",)
    good: str = ""  # another good outcome, stated: interrupt | over_budget | float_kept
    send: int | None = None
    timeout: float = 90.0
    check: Callable | None = None  # (fixtures, probe dir, log dir, run id) -> what is missing, or None


def values() -> list[Probe]:
    v = lambda name, what, key, value, expect=None: Probe(name, what, {key: value}, expect or re.escape(key))
    return [
        v("int_not_a_number", "an int knob given a word", "NUM_LAYERS", "four"),
        v("int_given_a_float", "an int knob given a decimal", "MODEL_DIM", "64.5"),
        v("int_below_range", "an int knob below its range", "NUM_LAYERS", "0"),
        v("float_not_a_number", "a float knob given a word", "MATRIX_LR", "fast"),
        v("float_nan", "a float knob given nan", "MATRIX_LR", "nan"),
        v("float_out_of_range", "a momentum above 1", "MUON_MOMENTUM", "1.5"),
        v("choice_unknown", "an activation that is not a choice", "MLP_ACT", "gelu"),
        v("preset_unknown", "a preset that does not exist", "PRESET", "tiny"),
        v("run_id_with_path", "RUN_ID with a path separator (its files would land outside LOG_DIR)", "RUN_ID",
          "../escaped"),
    ]  # fmt: skip


def names() -> list[Probe]:
    n = lambda name, what, key, expect: Probe(name, what, {key: "4"}, expect)
    return [
        n("misspelt_num_layer", "NUM_LAYER for NUM_LAYERS", "NUM_LAYER", "NUM_LAYERS"),
        n("misspelt_ttt_lr_", "TTT_LR_ (trailing underscore) for TTT_LR", "TTT_LR_", "TTT_LR"),
        n("misspelt_matrix_lrr", "MATRIX_LRR for MATRIX_LR", "MATRIX_LRR", "MATRIX_LR"),
        n("lowercase_knob", "num_layers in lower case", "num_layers", "(?i)num_layers"),
    ]


def shapes() -> list[Probe]:
    s = lambda name, what, env, expect: Probe(name, what, env, expect)
    return [
        s("dim_not_divisible_by_heads", "MODEL_DIM=66 with 4 heads", {"MODEL_DIM": "66"}, "MODEL_DIM"),
        s("heads_not_multiple_of_kv", "NUM_KV_HEADS=3 with 4 heads", {"NUM_KV_HEADS": "3"}, "NUM_KV_HEADS"),
        s("rope_dims_odd", "an odd ROPE_DIMS", {"ROPE_DIMS": "7"}, "ROPE_DIMS"),
        s("loop_end_past_depth", "LOOP_END beyond the last layer", {"LOOP_END": "4"}, "LOOP_END"),
        s("parallel_inside_loop", "parallel lanes starting inside the loop", {"PARALLEL_START_LAYER": "2"},
          "PARALLEL_START_LAYER"),
        s("schedule_syntax", "SEQ_LEN_SCHEDULE with ':' for '@'", {"SEQ_LEN_SCHEDULE": "128:0.5,256:1.0"},
          "SEQ_LEN_SCHEDULE"),
        s("schedule_length_not_dividing_batch", "a scheduled length (96) that does not divide the batch",
          {"SEQ_LEN_SCHEDULE": "96@0.5,256@1.0"}, "TRAIN_BATCH_TOKENS|SEQ_LEN"),
        s("short_chunks_syntax", "TTT_SHORT_CHUNKS with '-' for ':'", {"TTT_SHORT_CHUNKS": "256-8"},
          "TTT_SHORT_CHUNKS"),
        s("batch_not_multiple_of_seq_len", "TRAIN_BATCH_TOKENS=4000 with 256-token sequences",
          {"TRAIN_BATCH_TOKENS": "4000"}, "TRAIN_BATCH_TOKENS"),
    ]  # fmt: skip


def lengths() -> list[Probe]:
    tiny = lambda fx, d: {"DATA_PATH": fx.tiny_val()}
    return [
        Probe("eval_stride_over_eval_len", "EVAL_STRIDE above EVAL_SEQ_LEN (part of the set unscored)",
              {"EVAL_STRIDE": "512"}, "EVAL_STRIDE"),
        Probe("ttt_chunk_over_context", "TTT_CHUNK above TTT_CONTEXT", {"TTT_CHUNK": "512"}, "TTT_CHUNK|TTT_CONTEXT"),
        Probe("eval_len_over_val", "EVAL_SEQ_LEN=65536 on a validation set of one 523-token document (a dense "
              "T^2 mask on CPU)", {"EVAL_SEQ_LEN": "65536"}, "EVAL_SEQ_LEN", setup=tiny),
        Probe("train_len_over_val", "TRAIN_SEQ_LEN=65536 on a validation set of one 523-token document",
              {"TRAIN_SEQ_LEN": "65536", "TRAIN_BATCH_TOKENS": "65536"}, "TRAIN_SEQ_LEN", setup=tiny),
    ]  # fmt: skip


def data() -> list[Probe]:
    def shards(name, val=None, train=None):
        return lambda fx, d: {"DATA_PATH": fx.dataset(name, val=val(fx) if val else None,
                                                      train=train(fx) if train else None)}  # fmt: skip

    def later(fx, bad_token: bool):
        first, second = fx.train_head(3000), fx.train_head(60000)[3000:].copy()
        if bad_token:
            second[10] = 5000
        tail = shard_bytes(second)
        return {"fineweb_train_000000.bin": shard_bytes(first),
                "fineweb_train_000001.bin": tail if bad_token else tail[: len(tail) // 2]}  # fmt: skip

    over_vocab = lambda fx: fx.val(np.where(np.arange(fx.val_tokens().size) == 100, 2000, fx.val_tokens()))
    cut = lambda fx: {"fineweb_val_000000.bin": shard_bytes(fx.val_tokens())[: 4 * HEADER_INTS + 1000]}
    return [
        Probe("data_path_missing", "DATA_PATH that does not exist", {"DATA_PATH": "/nonexistent/probe_data"},
              "DATA_PATH"),
        Probe("no_val_shards", "a data folder without validation shards", expect="val",
              setup=lambda fx, d: {"DATA_PATH": fx.dataset("no_val", val={})}),
        Probe("empty_val_shard", "a validation shard of 0 tokens", expect="fineweb_val_000000|validation",
              setup=shards("empty_val", val=lambda fx: fx.val([]))),
        Probe("val_bad_magic", "a validation shard with a wrong magic number", expect="magic|shard",
              setup=shards("val_bad_magic", val=lambda fx: fx.val(fx.val_tokens(), magic=12345))),
        Probe("val_truncated", "a validation shard cut short of its header's count", expect="fineweb_val_000000",
              setup=shards("val_truncated", val=cut)),
        Probe("val_token_over_vocab", "a validation token id 2000 >= VOCAB_SIZE=1024", expect="VOCAB_SIZE|vocab",
              setup=shards("val_over_vocab", val=over_vocab)),
        Probe("no_train_shards", "a data folder without training shards", expect="train",
              setup=lambda fx, d: {"DATA_PATH": fx.dataset("no_train", train={})}),
        Probe("later_train_shard_truncated", "the second of two training shards cut short",
              expect="fineweb_train_000001", setup=shards("train_cut", train=lambda fx: later(fx, False))),
        Probe("later_train_shard_bad_token", "a token id >= VOCAB_SIZE in the second training shard (reached in "
              "the first step)", expect="fineweb_train_000001",
              setup=shards("train_bad_token", train=lambda fx: later(fx, True))),
    ]  # fmt: skip


def tokenizers() -> list[Probe]:
    def caseops(fx, d):
        if not (fx.caseops / "tokenizer.model").is_file():
            raise FixtureError("silent", f"fixture: no CaseOps sample at {fx.caseops} (data/prepare.py --variant "
                               "caseops)")  # fmt: skip
        path = fx.dataset("caseops_no_sidecar", source=fx.caseops)
        return {"DATA_PATH": path, "TOKENIZER_PATH": f"{path}/tokenizer.model", "VOCAB_SIZE": "8192"}

    return [
        Probe("tokenizer_missing", "TOKENIZER_PATH that does not exist",
              {"TOKENIZER_PATH": "/nonexistent/probe.model"}, "TOKENIZER_PATH"),
        Probe("tokenizer_not_a_model", "a text file as the tokenizer", expect="TOKENIZER_PATH|SentencePiece",
              setup=lambda fx, d: {"TOKENIZER_PATH": fx.text_file("not_a_model.model", "hello\n")}),
        Probe("tokenizer_wrong_vocab", "the sp8192 tokenizer with VOCAB_SIZE=1024", expect="vocab|VOCAB_SIZE",
              setup=lambda fx, d: {"TOKENIZER_PATH": fx.shared_file("fineweb_8192_bpe.model")}),
        Probe("tokenizer_sp8192_on_sp1024_data", "the sp8192 tokenizer and VOCAB_SIZE=8192 on the sp1024 sample "
              "(every id is below 8192; bytes charged by the wrong tables)", {"VOCAB_SIZE": "8192"},
              "tokenizer|TOKENIZER_PATH|sha256",
              setup=lambda fx, d: {"TOKENIZER_PATH": fx.shared_file("fineweb_8192_bpe.model")}),
        Probe("caseops_without_sidecars", "the CaseOps sample without its byte sidecars (fineweb_val_bytes_*)",
              expect="val_bytes|sidecar|CaseOps", setup=caseops),
    ]  # fmt: skip


def validation_set() -> list[Probe]:
    """Issue 32's two hostile cases, on the CaseOps sample: a byte sidecar that lies, and a validation shard that is
    not in the set; and a record on a validation set that is not the challenge's."""

    def caseops(name, files, rehash=False):
        def setup(fx, d):
            src = fx.caseops
            if not (src / "fineweb_val_bytes_000000.bin").is_file():
                raise FixtureError("silent", f"fixture: no CaseOps sample at {src} (data/prepare.py --variant caseops)")
            path = fx.dataset(name, val=files(src), source=src, rehash=rehash)
            return {"DATA_PATH": path, "TOKENIZER_PATH": f"{path}/tokenizer.model", "VOCAB_SIZE": "8192"}

        return setup

    side, val = "fineweb_val_bytes_000000.bin", "fineweb_val_000000.bin"
    lie = lambda src: {val: (src / val).read_bytes(), side: shard_bytes(read_tokens(src / side) + 1)}
    copy = lambda src: {f: (src / g).read_bytes() for f, g in ((val, val), (side, side),
                        ("fineweb_val_000001.bin", val), ("fineweb_val_bytes_000001.bin", side))}  # fmt: skip

    def record_other(fx, d):
        a = str(fx.run_a().with_suffix(".txt"))
        return {"argv": ["tools/record.py", "build", a, a, "--name", d.name, "--records", str(d / "records")]}

    return [
        Probe("sidecar_plus_one", "the CaseOps byte sidecar with +1 on every count (same length; the manifest as "
              "written)", expect=rf"{side}: sha256 [0-9a-f]{{64}}, but manifest.json records",
              setup=caseops("sidecar_plus_one", lie)),
        Probe("sidecar_plus_one_rehashed", "the same lying sidecar, its sha256 written into the manifest (the "
              "per-document proof)", expect="sidecar bytes are wrong in 108 of 108 validation documents",
              setup=caseops("sidecar_plus_one_rehashed", lie, rehash=True)),
        Probe("val_copy_in_data_path", "a second copy of the validation shard and its sidecar in DATA_PATH (the "
              "tilt's hints would find every document of the copy)",
              expect="not listed in its manifest.json: fineweb_val_000001.bin, fineweb_val_bytes_000001.bin",
              setup=caseops("val_copy", copy)),
        Probe("record_other_val", "tools/record.py build on logs of the sample (val_set:other, not the challenge's "
              "validation set)", expect="val_set not official", tool=True, setup=record_other),
    ]  # fmt: skip


def eval_only() -> list[Probe]:
    def artifact(name=None, damage=None, path=None):
        def setup(fx, d):
            return {"EVAL_ONLY": path(fx) if path else fx.artifact(name, damage)}

        return setup

    a = lambda fx: str(fx.run_a().with_suffix(".ptz"))
    return [
        Probe("eval_only_missing", "EVAL_ONLY naming no file", {"EVAL_ONLY": "/nonexistent/probe.ptz"}, "EVAL_ONLY"),
        Probe("eval_only_not_an_artifact", "EVAL_ONLY given the run's .float.pt checkpoint", expect="artifact",
              setup=artifact(path=lambda fx: str(fx.run_a().with_suffix(".float.pt")))),
        Probe("eval_only_truncated", "EVAL_ONLY given the first half of an artifact", expect="artifact|truncated",
              setup=artifact("truncated", lambda b: b[: len(b) // 2])),
        Probe("eval_only_corrupt_stream", "EVAL_ONLY given an artifact with one byte of a stream flipped",
              expect="corrupt|checksum", setup=artifact("corrupt", flip_byte_near_end)),
        Probe("eval_only_undecodable_stream", "an artifact stream of random bytes whose checksum matches",
              expect="artifact|stream|corrupt", setup=artifact("undecodable", undecodable_stream)),
        Probe("eval_only_other_shape", "EVAL_ONLY given a MODEL_DIM=96 artifact with MODEL_DIM=64 set",
              {"MODEL_DIM": "64"}, "MODEL_DIM|shape|configuration|size mismatch",
              setup=artifact(path=lambda fx: str(fx.run_wide().with_suffix(".ptz")))),
        Probe("eval_only_other_mlp_act", "the same-shape artifact under MLP_ACT=relu2 (trained leaky_relu2)",
              {"MLP_ACT": "relu2"}, "MLP_ACT", setup=artifact(path=a)),
        Probe("eval_only_other_xsa", "the same-shape artifact under XSA_LAST_N=2 (trained 4)", {"XSA_LAST_N": "2"},
              "XSA_LAST_N", setup=artifact(path=a)),
        Probe("eval_only_other_softcap", "the same-shape artifact under LOGIT_SOFTCAP=15 (trained 30)",
              {"LOGIT_SOFTCAP": "15"}, "LOGIT_SOFTCAP", setup=artifact(path=a)),
    ]  # fmt: skip


def unwritable_dir(d: Path) -> str:
    """A directory this process cannot create files in: mode 555, and as root (which ignores modes) immutable too;
    else /sys/kernel. The probe's cleanup makes it mutable again."""
    path = d / "readonly"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    try:
        (path / ".probe").write_text("")
    except OSError:
        return str(path)
    (path / ".probe").unlink()
    if Path("/sys/kernel").is_dir():
        return "/sys/kernel"
    raise FixtureError("silent", "fixture: no unwritable directory could be made here")


def logs() -> list[Probe]:
    def under_file(fx, d):
        (d / "a_file").write_text("not a directory\n")
        return {"LOG_DIR": str(d / "a_file" / "logs")}

    def reuse(fx, d):
        first, logs = fx.run_a(), d / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for suffix in (".txt", ".ptz"):
            shutil.copy(first.with_suffix(suffix), logs / f"fxA{suffix}")
        return {"LOG_DIR": str(logs), "RUN_ID": "fxA"}

    def first_log_kept(fx, d, log_dir, run_id):
        before = fx.run_a().with_suffix(".txt").read_bytes()
        now = (Path(log_dir) / f"{run_id}.txt").read_bytes()
        return None if now.startswith(before) else "the first run's log was overwritten"

    return [
        Probe("log_dir_under_a_file", "LOG_DIR below a regular file", expect="LOG_DIR", setup=under_file),
        Probe("log_dir_unwritable", "LOG_DIR in a directory that cannot be written", expect="LOG_DIR",
              setup=lambda fx, d: {"LOG_DIR": unwritable_dir(d)}),
        Probe("run_id_reused", "a second run with the RUN_ID of a finished run in the same LOG_DIR", expect="RUN_ID",
              setup=reuse, check=first_log_kept),
    ]  # fmt: skip


def endings(repo: Path) -> list[Probe]:
    def over_budget(fx, d, log_dir, run_id):
        return None if (Path(log_dir) / f"{run_id}.over_budget.ptz").is_file() else f"no {run_id}.over_budget.ptz kept"

    def float_kept(fx, d, log_dir, run_id):
        path = Path(log_dir) / f"{run_id}.float.pt"
        if not path.is_file():
            return f"no {run_id}.float.pt kept"
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)["state"]
        bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        return f"{path.name} kept, but {len(bad)} tensors are not finite (e.g. {bad[0]})" if bad else None

    code = (repo / "train_gpt.py").stat().st_size if (repo / "train_gpt.py").is_file() else 0
    long_run = {"MAX_WALLCLOCK_SECONDS": "120", "ITERATIONS": "100000"}
    return [
        Probe("artifact_over_budget", "ARTIFACT_MAX_BYTES = the code + 1,000 bytes (good: an error naming the "
              "budget, <RUN_ID>.over_budget.ptz kept)", {"ARTIFACT_MAX_BYTES": str(code + 1000)},
              "ARTIFACT_MAX_BYTES|budget|bytes >", good="over_budget", check=over_budget),
        Probe("nan_loss", "ADAM_EPS=0: 0/0 in AdamW, a NaN loss at step 2 (MATRIX_LR at its maximum, 10, does not "
              "diverge here; good: an error, <RUN_ID>.float.pt kept with finite weights)",
              {"ADAM_EPS": "0", "MAX_WALLCLOCK_SECONDS": "0"}, "loss|nan|NaN", good="float_kept", check=float_kept),
        Probe("sigint_mid_training", "SIGINT after step 2 (good: exit 130, the log's last line `error: interrupted; "
              "kept: ...`)", long_run, good="interrupt", send=signal.SIGINT),
        Probe("sigterm_mid_training", "SIGTERM after step 2 (good: as SIGINT)", long_run, good="interrupt",
              send=signal.SIGTERM),
    ]  # fmt: skip


def tools() -> list[Probe]:
    def record(other):
        def setup(fx, d):
            a, b = fx.run_a(), other(fx)
            return {"argv": ["tools/record.py", "build", str(a.with_suffix(".txt")), str(b.with_suffix(".txt")),
                             "--name", d.name, "--records", str(d / "records"), "--date", "2026-01-01"]}  # fmt: skip

        return setup

    def verify(fx, d):
        t, _ = fx.changed_token()
        return {"argv": ["data/verify.py", fx.dataset("verify_changed", val=fx.val(t))]}

    def unfinished(fx, d):
        text = fx.run_a().with_suffix(".txt").read_bytes()
        path = d / "unfinished.txt"
        path.write_bytes(text[: text.rindex(b"\ntrain_done") + 1])
        return {"argv": ["tools/record.py", "build", str(path), "--name", d.name, "--records", str(d / "records")]}

    def rescue(fx, d):
        env = {**BASE, **fx.sample_env(), "LOG_DIR": str(d / "logs"), "RUN_ID": d.name}
        return {"argv": ["tools/rescue.py", str(fx.run_a().with_suffix(".ptz"))], "env": env}

    return [
        Probe("record_width_mismatch", "tools/record.py build on logs of MODEL_DIM 64 and 96", expect="MODEL_DIM",
              tool=True, setup=record(lambda fx: fx.run_wide())),
        Probe("record_stride_mismatch", "tools/record.py build on logs scored with EVAL_STRIDE 0 and 64",
              expect="EVAL_STRIDE", tool=True, setup=record(lambda fx: fx.run_sliding())),
        Probe("verify_token_changed", "data/verify.py on a copy whose validation shard has one in-vocabulary token "
              "changed", expect="fineweb_val_000000|sha256|checksum|hash", tool=True, prefixes=("verify:FAILED",),
              setup=verify),
        Probe("rescue_not_a_checkpoint", "tools/rescue.py given the .ptz artifact instead of the .float.pt",
              expect="float.pt", tool=True, setup=rescue),
    ]  # fmt: skip


def all_probes(repo: Path) -> list[Probe]:
    return [*values(), *names(), *shapes(), *lengths(), *data(), *tokenizers(), *validation_set(), *eval_only(),
            *logs(), *endings(repo), *tools()]  # fmt: skip


# -----------------------------------------------------------------------------
# One probe: set up, run, classify
# -----------------------------------------------------------------------------
def log_state(path: Path):
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None


def run_probe(p: Probe, fx: Fixtures, mem_gb: float) -> dict:
    d = fx.tmp / "runs" / p.name
    d.mkdir(parents=True, exist_ok=True)
    try:
        extra = p.setup(fx, d) if p.setup else {}
    except FixtureError as e:
        return {"outcome": e.outcome, "message": str(e), "seconds": 0.0, "command": ""}
    if p.tool:  # the command's own env (a tool that trains or scores gets the sample's)
        env, shown, argv = extra.get("env", {}), {}, extra["argv"]
    else:
        env = {**BASE, **fx.sample_env(), "LOG_DIR": str(d / "logs"), "RUN_ID": p.name, **p.env, **extra}
        shown, argv = {**p.env, **extra}, ["train_gpt.py"]
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in shown.items()), "python3", *map(shlex.quote, argv)])
    log_dir, run_id = env.get("LOG_DIR"), env.get("RUN_ID")
    log_path = Path(log_dir) / f"{run_id}.txt" if log_dir and run_id else None
    argv, env = [sys.executable, *argv], child_env(env)
    before = log_state(log_path) if log_path else None
    r = run_command(argv, env, fx.repo, d, p.timeout, mem_gb, send=p.send)
    opened = log_path is not None and log_state(log_path) not in (None, before)
    log = log_path.read_text(errors="replace") if opened else None
    outcome, message = classify(r.rc, r.out, r.err, expect=p.expect, prefixes=p.prefixes, log=log,
                                timed_out=r.timed_out, timeout=p.timeout, interrupt=p.good == "interrupt")  # fmt: skip
    failed = p.check(fx, d, log_dir, run_id) if p.check and not r.timed_out else None
    if failed:  # a good outcome needs it; on any other outcome it is one more fact
        outcome, message = "silent" if outcome == "error" else outcome, f"{message} [{failed}]"
    if r.note and outcome != "error":
        message = f"{message} ({r.note})"
    return {"outcome": outcome, "message": message, "seconds": round(r.seconds, 1), "command": command}


def this_machine() -> str:
    return f"{cpu_and_cores()}, Python {platform.python_version()}"


def repo_version(repo: Path) -> str:
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose train_gpt.py and tools are probed")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these probes")
    ap.add_argument("--out", type=Path, help="JSON results (e.g. bench/results/probes.json)")
    ap.add_argument("--data", type=Path, help="the sp1024 sample (default: REPO/data/datasets/sample_sp1024)")
    ap.add_argument("--mem-gb", type=float, default=8.0, help="address-space limit of each run (0: none)")
    ap.add_argument("--list", action="store_true", help="print the probes and what each does, then stop")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    a = ap.parse_args(argv)
    repo = a.repo.resolve()
    probes = all_probes(repo)
    if a.list:
        for p in probes:
            print(f"{p.name}: {p.what}")
        return {}
    unknown = sorted(set(a.only or []) - {p.name for p in probes})
    if unknown:
        sys.exit(f"error: no probe named {', '.join(unknown)} (--list names them)")
    probes = [p for p in probes if not a.only or p.name in a.only]
    sample = (a.data or repo / "data" / "datasets" / "sample_sp1024").resolve()
    if not (sample / "fineweb_val_000000.bin").is_file() or not (repo / "train_gpt.py").is_file():
        sys.exit(f"error: no train_gpt.py in {repo} or no sample at {sample} (python3 data/prepare.py)")
    shared = Path(os.environ.get("PG_SHARED_DATA", repo.parent / "shared" / "data"))
    tmp = Path(tempfile.mkdtemp(prefix="probes_"))
    fx = Fixtures(repo, tmp, sample, sample.parent / "sample_caseops_sp8192", shared, a.mem_gb, print)
    results, t0 = [], time.monotonic()
    try:
        for p in probes:
            r = {"name": p.name, "what": p.what, "expect": p.expect, **run_probe(p, fx, a.mem_gb)}
            results.append(r)
            print(f"probe:{p.name} outcome:{r['outcome']} seconds:{r['seconds']} message:"
                  f"{' '.join(r['message'].split())[:400]}", flush=True)  # fmt: skip
    finally:
        for ro in tmp.glob("runs/*/readonly"):
            subprocess.run(["chattr", "-i", str(ro)], capture_output=True)
            ro.chmod(0o755)
        if a.keep:
            print(f"kept:{tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    totals = {k: sum(r["outcome"] == k for r in results) for k in OUTCOMES}
    print(f"probes:{len(results)} " + " ".join(f"{k}:{v}" for k, v in totals.items()))
    summary = {
        "command": "python3 bench/probes.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        "date": datetime.date.today().isoformat(), "machine": this_machine(), "repo": str(repo),
        "repo_version": repo_version(repo), "mem_gb": a.mem_gb, "base_env": BASE, "probes_n": len(results),
        "totals": totals, "seconds": round(time.monotonic() - t0, 1), "fixture_seconds": round(fx.seconds, 1),
        "probes": results,
    }  # fmt: skip
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()

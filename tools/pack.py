"""Writes a self-extracting train_gpt.py: the counted code is the file that runs, so ship it small.

The readable source loses its comments, docstrings and the knobs' meanings (an AST round trip, so the
program is the same; tools/env_table.py reads the meanings from the source), is compressed with brotli
(which train_gpt.py imports anyway; 3% smaller than LZMA2 here), and held as one latin-1 string literal in a
two-line stub that decompresses and executes it under the stub's own name. Latin-1 maps each byte to one
character, so the literal costs about 1.02 bytes per compressed byte (base85: 1.25); only NUL, CR, LF, the
quote and the backslash are escaped. The packed script behaves like the readable one and, reading `__file__`,
reports its own (packed) size as the code bytes. The packed file is latin-1, not UTF-8: read it as bytes.

    python3 tools/pack.py train_gpt.py -o records/.../train_gpt.py
"""

from __future__ import annotations

import argparse
import ast
import os
import tempfile
from pathlib import Path

import brotli

STUB = b'# coding: latin-1\nimport brotli;exec(compile(brotli.decompress("%s".encode("latin-1")),__file__,"exec"))\n'
ESCAPES = {0: b"\\x00", 10: b"\\n", 13: b"\\r", 34: b'\\"', 92: b"\\\\"}  # all else is itself in latin-1


KNOB_TABLES = {"MODEL_SHAPE", "HPARAMS"}  # train_gpt.py's rows of (name, type, default, allowed, meaning)


def strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0].value if node.body and isinstance(node.body[0], ast.Expr) else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def blank_meanings(tree: ast.Module) -> ast.Module:
    """Each knob's meaning becomes '': documentation only, read by tools/env_table.py from the readable file."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) in KNOB_TABLES for t in node.targets):
            for row in node.value.elts:
                if isinstance(row, ast.Tuple):
                    row.elts[-1] = ast.Constant("")
    return tree


def stripped(source: str) -> str:
    """The program as it is packed: no comments, docstrings or knob meanings."""
    return ast.unparse(blank_meanings(strip_docstrings(ast.parse(source))))


def pack(source: str) -> bytes:
    blob = brotli.compress(stripped(source).encode(), quality=11, lgwin=24)
    return STUB % b"".join(ESCAPES.get(b, bytes([b])) for b in blob)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    packed = pack(args.source.read_text(encoding="utf-8"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(packed)
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    print(f"source_bytes:{args.source.stat().st_size} packed_bytes:{args.out.stat().st_size} out:{args.out}")


if __name__ == "__main__":
    main()

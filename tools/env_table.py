"""The README's table of environment variables, generated from train_gpt.HPARAMS (a test keeps them in sync).

python3 tools/env_table.py            # rewrite the table between the markers in README.md
python3 tools/env_table.py --check    # exit 1 if README.md's table is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- env-table:begin (tools/env_table.py) -->", "<!-- env-table:end -->"


def table() -> str:
    sys.path.insert(0, str(ROOT))
    import train_gpt

    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for name, typ, default, allowed, meaning in train_gpt.HPARAMS:
        if allowed is None:
            allowed_text = typ.__name__
        elif isinstance(allowed[0], str):
            allowed_text = " \\| ".join(allowed)
        else:
            allowed_text = f"{typ.__name__} in [{allowed[0]:g}, {allowed[1]:g}]"
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{name}` | {shown} | {allowed_text} | {meaning.replace('|', '/')} |")
    return "\n".join(rows)


def with_table(readme: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args()
    text = args.readme.read_text(encoding="utf-8")
    new = with_table(text)
    if args.check:
        print("env_table:" + ("up to date" if new == text else "out of date (run python3 tools/env_table.py)"))
        return int(new != text)
    tmp = args.readme.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())

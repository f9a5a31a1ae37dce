"""Put the demo's own output into the README: runs ``robustlab demo`` from scratch into ``runs/demo`` (which must
not exist: the README shows what a first run prints) and writes the end of what it printed between the README's
``<!-- demo output -->`` markers, so that the table a new user is shown is the one ``make demo`` prints.

    rm -rf runs/demo && .venv/bin/python benchmarks/readme_demo_table.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, between_markers  # noqa: E402

BEGIN, END = "<!-- demo output: begin -->", "<!-- demo output: end -->"


def replace_block(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block`` (a fenced text block)."""
    return between_markers(readme, BEGIN, END, f"```text\n{block.strip()}\n```", "README.md")


def demo_output(out_dir: Path) -> tuple[str, float]:
    """The end of the demo's printed output (from its title on) and the wall-clock seconds it took."""
    from robustlab.demo import run_demo

    printed: list[str] = []
    started = time.perf_counter()
    run_demo(out_dir, log=lambda line: (printed.append(line), print(line, flush=True)))
    seconds = time.perf_counter() - started
    start = max(i for i, line in enumerate(printed) if line.lstrip("\n").startswith("robustlab demo:"))
    return "\n".join(printed[start:]).strip(), seconds


def main() -> int:
    os.chdir(ROOT)  # the demo prints its output paths as given: relative, as `make demo` prints them
    out_dir = Path("runs/demo")
    if out_dir.exists():
        raise SystemExit(f"{out_dir} exists: delete it first (the README shows what a first run prints)")
    block, seconds = demo_output(out_dir)
    readme = ROOT / "README.md"
    readme.write_text(replace_block(readme.read_text(), block))
    print(f"README.md: the demo's output block replaced (the demo took {seconds / 60:.1f} minutes here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

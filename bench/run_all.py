"""Run every benchmark script in bench/ and print one combined ratio table (`make bench`).

Each bench/<name>.py (not run_all.py, not _*.py helpers) runs in its own process, one after the
other, so no benchmark disturbs another and each reads its environment variables at import.
Its output is passed through as it comes; the line it ends with (see _common.finish) carries
its rows. Arguments name the scripts to run (`run_all.py hub`); default: all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROWS_MARKER, THREADS, Row, table  # noqa: E402


def scripts(names: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py")
                   if p.name != Path(__file__).name and not p.name.startswith("_"))
    if names:
        found = [p for p in found if p.stem in names]
        missing = set(names) - {p.stem for p in found}
        if missing:
            raise SystemExit(f"no such benchmark: {', '.join(sorted(missing))}")
    return found


def run(script: Path) -> tuple[list[Row], int]:
    """Run one benchmark, echoing its output; its rows and exit status."""
    rows: list[Row] = []
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(ROWS_MARKER):
            rows = [Row.from_json(d) for d in json.loads(line[len(ROWS_MARKER):])]
        else:
            print(line, end="", flush=True)
    return rows, proc.wait()


def main(argv: list[str]) -> int:
    all_rows: list[Row] = []
    failed = []
    for script in scripts(argv):
        print(f"== {script.name}", flush=True)
        t = time.perf_counter()
        rows, status = run(script)
        print(f"== {script.name}: {len(rows)} rows in {time.perf_counter() - t:.0f} s"
              + (f", exit status {status}" if status else ""), flush=True)
        all_rows += rows
        if status or not rows:
            failed.append(script.name)
    print()
    print("Ratio table: medians [min..max] over the repeats, ratio of medians ours/theirs, "
          f"{THREADS} threads")
    print(table(all_rows) if all_rows else "(no rows)")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

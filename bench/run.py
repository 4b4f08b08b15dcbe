"""Run the benchmarks in bench/ and print one combined table; writes bench/results/summary.json.

    python bench/run.py                 # every bench/bench_*.py, in name order
    python bench/run.py sft dpo         # only bench_sft.py and bench_dpo.py
    python bench/run.py sft -- --repeats 5 --threads 2    # arguments after -- go to every benchmark

Each benchmark runs as its own process (a failure is reported and the others still run). Its results are
bench/results/<name>.json or bench/results/bench_<name>.json, if it (re)wrote them while it ran; the rows of each (`"rows": [...]`, as
`common.write_result` callers produce, or a `"table": {side: {...}}`) go into the combined table. Exit status 1 if any benchmark failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COLUMNS = ("bench", "benchmark", "setting", "side", "tokens_per_s", "tokens_per_cpu_s", "pairs_per_s", "peak_rss_mb",
           "train_rss_increase_mb", "roofline_6N", "threads", "load1_range")


def find_benches(names: list[str]) -> list[Path]:
    """bench_<name>.py for each name (or every bench_*.py when none is given)."""
    if not names:
        return sorted(common.BENCH_DIR.glob("bench_*.py"))
    paths = []
    for name in names:
        stem = Path(name).stem
        path = common.BENCH_DIR / f"{stem if stem.startswith('bench_') else 'bench_' + stem}.py"
        if not path.exists():
            available = ", ".join(p.stem.removeprefix("bench_") for p in sorted(common.BENCH_DIR.glob("bench_*.py")))
            raise SystemExit(f"no benchmark {path.name}; available: {available}")
        paths.append(path)
    return paths


def run_bench(script: Path, extra: list[str]) -> dict:
    """Run one benchmark (output streamed), then collect the result files it wrote."""
    print(f"== {script.name} {' '.join(extra)}", flush=True)
    start = time.time()
    # offline, passive OpenMP, 1 thread for the benchmark's own parent; it sets its sides' threads itself
    proc = subprocess.run([sys.executable, str(script), *extra], env=common.child_env(threads=1))
    seconds = time.time() - start
    names = {script.stem, script.stem.removeprefix("bench_")}  # results/sft.json or results/bench_sft.json
    results = sorted(p for p in common.RESULTS_DIR.glob("*.json") if p.stem in names and p.stat().st_mtime >= start)
    rows = []
    for path in results:
        data = json.loads(path.read_text())
        found = data.get("rows") or [{"side": key, **row} for key, row in data.get("table", {}).items()]
        rows += [{"bench": data.get("name", path.stem), **row} for row in found if isinstance(row, dict)]
    if proc.returncode != 0 or not rows:
        status = f"failed (exit {proc.returncode})" if proc.returncode else "wrote no rows"
        rows.append({"bench": script.stem.removeprefix("bench_"), "benchmark": status})
    return {"script": script.name, "exit_code": proc.returncode, "seconds": round(seconds, 1),
            "results": [str(p.relative_to(common.BENCH_DIR)) for p in results], "rows": rows}


def main(argv: list[str]) -> int:
    names, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    if any(n.startswith("-") for n in names):
        raise SystemExit(__doc__)
    benches = [run_bench(script, extra) for script in find_benches(names)]
    rows = [row for b in benches for row in b["rows"]]
    print()
    common.print_table(rows, COLUMNS)
    path = common.write_result("summary", {"benches": benches, "rows": rows})
    print(f"written to {path}")
    return 1 if any(b["exit_code"] for b in benches) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

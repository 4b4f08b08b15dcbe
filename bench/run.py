"""Run the benchmarks in bench/ and print one combined table; writes bench/results/summary.json.

    python bench/run.py                 # every bench/bench_*.py, in name order
    python bench/run.py sft dpo         # only bench_sft.py and bench_dpo.py
    python bench/run.py sft dpo rm -- --shape tiny    # arguments after -- go to every benchmark named

Each benchmark runs as its own process (a failure is reported and the others still run). Its results are
bench/results/<name>.json or bench/results/bench_<name>.json, if it (re)wrote them while it ran; the rows of each
(`"rows": [...]` or `"summary": [...]`, as `common.write_result` callers produce, or a `"table": {side: {...}}`) go into the combined
table, and their `"targets"` rows (rlhfkit / TRL ratio, wanted, "target met / not met") into a combined targets
table. The wall time of each benchmark and of the whole run, and the load before and after, are printed and saved.
Exit status 1 if any benchmark failed.
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
TARGET_COLUMNS = ("bench", "target", "rlhfkit / TRL", "wanted", "result")


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
    rows, targets = [], []
    for path in results:
        data = json.loads(path.read_text())
        found = (data.get("rows") or data.get("summary")
                 or [{"side": key, **row} for key, row in data.get("table", {}).items()])
        rows += [{"bench": data.get("name", path.stem), **row} for row in found if isinstance(row, dict)]
        targets += [{"bench": data.get("name", path.stem), **row} for row in data.get("targets") or []]
    if proc.returncode != 0 or not rows:
        status = f"failed (exit {proc.returncode})" if proc.returncode else "wrote no rows"
        rows.append({"bench": script.stem.removeprefix("bench_"), "benchmark": status})
    return {"script": script.name, "exit_code": proc.returncode, "seconds": round(seconds, 1),
            "results": [str(p.relative_to(common.BENCH_DIR)) for p in results], "rows": rows, "targets": targets}


def main(argv: list[str]) -> int:
    names, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    if any(n.startswith("-") for n in names):
        raise SystemExit(__doc__)
    start, load_before = time.time(), common.load_average()
    benches = [run_bench(script, extra) for script in find_benches(names)]
    rows = [row for b in benches for row in b["rows"]]
    targets = [row for b in benches for row in b["targets"]]
    seconds, load_after = round(time.time() - start, 1), common.load_average()
    print()
    common.print_table(rows, COLUMNS)
    if targets:
        print()
        common.print_table(targets, TARGET_COLUMNS)
    print(f"\ntotal {seconds / 60:.1f} min (" + ", ".join(f"{b['script']} {b['seconds'] / 60:.1f}" for b in benches)
          + f"); load1/5/15 before {load_before}, after {load_after}")
    path = common.write_result("summary", {"benches": benches, "rows": rows, "targets": targets, "seconds": seconds,
                                           "load_before": load_before, "load_after": load_after})
    print(f"written to {path}")
    return 1 if any(b["exit_code"] for b in benches) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`vaelab reproduce --quick`: one process vs --workers N vs --ray, wall time side by side, and whether
the three results.json files are identical.

Run on demand (not in CI):  VAELAB_DATA=../shared/data .venv/bin/python benchmarks/executor_speed.py
Each variant writes a fresh report in a temporary directory (nothing is reused between them). The
classifier is trained once into the cache before timing, so no variant pays for it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vaelab.device import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    vaelab = [sys.executable, "-m", "vaelab", "reproduce", "--quick"]
    variants = {"serial": [], f"--workers {args.workers}": ["--workers", str(args.workers)], "--ray": ["--ray"]}
    print(f"{cpu_model()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", "from vaelab.classifier import load_classifier; load_classifier()"],
                       check=True, capture_output=True)
        seconds, results = {}, {}
        for name, flags in variants.items():
            out = Path(tmp) / name.strip("-").replace(" ", "")
            started = time.perf_counter()
            subprocess.run(vaelab + flags + ["--out", str(out)], check=True, capture_output=True)
            seconds[name] = time.perf_counter() - started
            results[name] = (out / "results.json").read_bytes()
    for name, s in seconds.items():
        same = "identical to serial" if results[name] == results["serial"] else "DIFFERS from serial"
        print(f"{name:12} {s:7.1f} s wall  ({seconds['serial'] / s:.2f}x serial)  results.json {same}")


if __name__ == "__main__":
    main()

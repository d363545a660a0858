"""Peak memory of `chada embed --objects` to Parquet at 10k and 200k cells: it must not grow with rows.

A synthetic plate: one 2-channel 256 x 256 field (uint16 TIFF) with a label image of 100 square
nuclei (10 x 10 grid), listed ``rows / 100`` times in a manifest (one row per field, its own image id
and well), so the table has ``rows`` cells while the files stay small. Every size runs ``chada embed``
in a fresh process (``python -m chada.cli``, the tiny test model ``chada_vit_test``, 16-px crops, fp32,
no DataLoader workers so the one process holds everything), and the peak resident memory of that
process is read with ``getrusage(RUSAGE_CHILDREN)`` in a wrapper process of its own.

    flock /tmp/chada-cpu.lock python benchmarks/embed_memory.py --rows 10000 200000 --out /tmp/embed_memory
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

ROOT = Path(__file__).resolve().parent.parent
CELLS_PER_FIELD = 100

_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def write_plate(folder: Path, n_fields: int) -> Path:
    """The field, its labels and a manifest of ``n_fields`` rows pointing at them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = rng.integers(100, 4000, (2, 256, 256), dtype=np.uint16)
    labels = np.zeros((256, 256), np.uint16)
    for k in range(CELLS_PER_FIELD):
        y, x = 13 + 25 * (k // 10), 13 + 25 * (k % 10)
        labels[y - 4 : y + 4, x - 4 : x + 4] = k + 1
        img[:, y - 4 : y + 4, x - 4 : x + 4] += 3000
    tifffile.imwrite(folder / "field.tif", img, photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", labels)
    rows = pd.DataFrame({
        "image_id": [f"f{i:06d}" for i in range(n_fields)],
        "dataset": "bench",
        "file": "field.tif",
        "channel_names": "DAPI;Actin",
        "objects_file": "labels.tif",
        "well": [f"{chr(65 + (i // 24) % 16)}{1 + i % 24:02d}" for i in range(n_fields)],
        "plate": [f"P{i // 384}" for i in range(n_fields)],
    })  # fmt: skip
    path = folder / f"manifest_{n_fields}.csv"
    rows.to_csv(path, index=False)
    return path


def embed_command(manifest: Path, out: Path, batch_size: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "chada.cli", "embed", "--model", "chada_vit_test", "--manifest", str(manifest),
            "--out", str(out), "--objects", "--crop-size", "16", "--image-size", "16", "--batch-size",
            str(batch_size), "--workers", str(workers), "--precision", "fp32", "--quiet", "--no-resume"]  # fmt: skip


def measure(rows: int, folder: Path, batch_size: int) -> dict:
    manifest = write_plate(folder, rows // CELLS_PER_FIELD)
    out = folder / f"cells_{rows}.parquet"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *embed_command(manifest, out, batch_size, 0)],
                          capture_output=True, text=True, env=_env())  # fmt: skip
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"chada embed failed for {rows} rows:\n{proc.stderr[-2000:]}")
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(out).metadata
    assert meta.num_rows == rows, (meta.num_rows, rows)
    peak_mb = int(proc.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    return {"rows": rows, "peak_mb": round(peak_mb, 1), "seconds": round(seconds, 1),
            "row_groups": meta.num_row_groups, "file_mb": round(out.stat().st_size / 2**20, 1)}  # fmt: skip


def _env() -> dict:
    import os

    return dict(
        os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 200_000])
    ap.add_argument("--out", type=Path, default=Path("/tmp/embed_memory"))
    ap.add_argument("--batch-size", type=int, default=256, help="cells per forward pass")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = [measure(r, args.out, args.batch_size) for r in args.rows]
    print(f"CPU: {cpu_model()}; chada_vit_test, 16-px crops of 2 channels, --batch-size {args.batch_size}, "
          f"chunks of 20 fields (2,000 cells), workers 0")  # fmt: skip
    print("| cells (rows) | peak RSS (MB) | seconds | row groups | file (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['peak_mb']:.0f} | {r['seconds']:.0f} | {r['row_groups']} | {r['file_mb']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Corpus-scale time and peak memory of ``chada embed`` and ``chada evaluate`` (issue 18).

Every measured command runs in its own process under ``/usr/bin/time -v``: wall time is "Elapsed
(wall clock)", peak memory is "Maximum resident set size" (the whole process, Python and libraries
included).

    python benchmarks/eval_scale.py evaluate --sizes 10000 30000 100000     # synthetic feature files
    python benchmarks/eval_scale.py parts --sizes 100000                    # kNN and probe alone, 100 %
    python benchmarks/eval_scale.py embed --sizes 10000 30000 100000        # TIFFs + chada_vit_test
    # common: --work DIR (default: a temporary folder)  --json results.json  --keep

``evaluate``: a feature file with N rows (``feat_cls`` D=192 and ``feat_all`` D=384, the sizes of
ChAda-ViT Moyen; 10 classes of Gaussian blobs; 80 % ``train`` / 20 % ``test``), then ``chada evaluate
--embeddings F --label-column label`` with its defaults: linear probe, weighted kNN (k=20, T=0.07) and
1-NN on 1, 10 and 100 % of the training rows, 5 seeds, both feature kinds, diagnostics and figures.

``parts``: one process per piece on the same file, 100 % of the training rows, ``feat_all``: the kNN
(k=20) alone and the linear probe (standardise, PCA to 256, lbfgs logistic regression) alone.

``embed``: N random 3-channel 32 x 32 uint16 TIFFs and a manifest, then ``chada embed --model
chada_vit_test --image-size 32`` (batch 32, 20 batches per resumable chunk, no workers). The table
gives images/s, so larger corpora can be extrapolated from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM_CLS, DIM_ALL, CLASSES = 192, 384, 10


def cpu_name() -> str:
    name, flags = platform.processor() or "?", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1)
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
    except (OSError, AttributeError):
        pass
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} logical CPUs" + (f", {', '.join(extras)}" if extras else "")


def timed(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``argv`` under ``/usr/bin/time -v``: ``{"wall_s", "max_rss_mb"}`` (raises on failure)."""
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    return {"wall_s": round(seconds, 1), "max_rss_mb": round(rss / 1024, 1), "stdout": proc.stdout[-1000:]}


def write_features(path: Path, n: int, seed: int = 0) -> Path:
    """N rows of two feature kinds in 10 Gaussian classes, 80 % train / 20 % test."""
    import pandas as pd

    from chada.encode.store import EmbeddingSet, save_embeddings

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    centres = rng.normal(0, 1, (CLASSES, DIM_ALL)).astype(np.float32) * 0.1
    x = rng.normal(0, 1, (n, DIM_ALL)).astype(np.float32)
    x += centres[labels]
    meta = pd.DataFrame(
        {
            "image_id": [f"img{i:07d}" for i in range(n)],
            "dataset": "synthetic",
            "label": [f"class{c}" for c in labels],
            "split": np.where(rng.random(n) < 0.8, "train", "test"),
        }
    )
    emb = EmbeddingSet({"cls": x[:, :DIM_CLS].copy(), "all": x}, meta, {"model": "synthetic_features"})
    save_embeddings(emb, path)
    return path


def run_evaluate(sizes: list[int], work: Path) -> list[dict]:
    rows = []
    for n in sizes:
        feats = write_features(work / f"features_{n}.npz", n)
        out = work / f"eval_{n}"
        res = timed(["chada", "evaluate", "--embeddings", str(feats), "--label-column", "label", "--out", str(out),
                     "--quiet"])  # fmt: skip
        summary = _headline(out)
        rows.append({"n": n, **res, **summary})
        print(f"evaluate n={n}: {res['wall_s']} s, {res['max_rss_mb']} MB, {summary}", flush=True)
    return rows


def _headline(out: Path) -> dict:
    import pandas as pd

    df = pd.read_csv(out / "results_long.csv")
    full = df[(df["fraction"] == 1.0) & (df["feature"] == "all")]
    pick = {m: float(full[full["metric"] == m]["value"].mean()) for m in ("linear_top1", "knn_top1")}
    return {"result_rows": len(df), "linear_top1_all_100": round(pick["linear_top1"], 4),
            "knn_top1_all_100": round(pick["knn_top1"], 4)}  # fmt: skip


_PART = """
import sys, time
import numpy as np
from chada.encode.store import load_embeddings
emb = load_embeddings(sys.argv[2])
x = emb.get("all"); y = emb.meta["label"].astype(str).to_numpy(); s = emb.meta["split"].to_numpy()
tr, te = s == "train", s == "test"
t0 = time.perf_counter()
if sys.argv[1] == "knn":
    from chada.eval.knn import knn_accuracy
    acc = knn_accuracy(x[tr], y[tr], x[te], y[te], k=20, temperature=0.07)
else:
    from chada.eval.probes import linear_probe_classification
    acc = linear_probe_classification(x[tr], y[tr], x[te], y[te])["accuracy"]
print(f"{acc:.4f} {time.perf_counter() - t0:.2f}")
"""


def run_parts(sizes: list[int], work: Path) -> list[dict]:
    rows = []
    for n in sizes:
        feats = work / f"features_{n}.npz"
        if not feats.exists():
            write_features(feats, n)
        for part in ("knn", "probe"):
            res = timed([sys.executable, "-c", _PART, part, str(feats)])
            acc, compute = res.pop("stdout").split()[-2:]
            rows.append({"n": n, "part": part, **res, "compute_s": float(compute), "accuracy": float(acc)})
            print(f"{part} n={n}: {rows[-1]}", flush=True)
    return rows


def write_images(folder: Path, n: int, size: int = 32, channels: int = 3) -> Path:
    import pandas as pd
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        arr = rng.integers(0, 4000, (channels, size, size), dtype=np.uint16)
        tifffile.imwrite(folder / f"im{i:07d}.tif", arr, photometric="minisblack", metadata={"axes": "CYX"})
        rows.append({"image_id": f"im{i:07d}", "dataset": "synthetic", "file": f"im{i:07d}.tif",
                     "channel_names": "DAPI;Actin;Mito"})  # fmt: skip
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run_embed(sizes: list[int], work: Path, image_size: int) -> list[dict]:
    rows = []
    for n in sizes:
        folder = work / f"images_{n}"
        t0 = time.perf_counter()
        manifest = write_images(folder, n)
        written = time.perf_counter() - t0
        out = work / f"emb_{n}.npz"
        res = timed(["chada", "embed", "--model", "chada_vit_test", "--manifest", str(manifest), "--out", str(out),
                     "--image-size", str(image_size), "--quiet"])  # fmt: skip
        res.pop("stdout")
        rows.append(
            {"n": n, **res, "images_per_s": round(n / res["wall_s"], 1), "write_images_s": round(written, 1)}
        )
        print(f"embed n={n}: {rows[-1]}", flush=True)
        shutil.rmtree(folder)
        out.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("evaluate", "parts", "embed"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="chada-eval-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()}; torch threads: default; work: {work}", flush=True)
    try:
        if args.what == "evaluate":
            rows = run_evaluate(args.sizes, work)
        elif args.what == "parts":
            rows = run_parts(args.sizes, work)
        else:
            rows = run_embed(args.sizes, work, args.image_size)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        r.pop("stdout", None)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"cpu": cpu_name(), "what": args.what, "rows": rows}, indent=2) + "\n"
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

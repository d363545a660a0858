"""Rehearsal of the paper-scale pretraining path at small size, end to end, on CPU.

The UNCHANGED ``configs/idrcell100k_moyen.yaml`` with size overrides only (epochs and warm-ups in
proportion, batch, corpus, workers, checkpoint cadence; device cpu), on a corpus of 224-px images with
1 to 7 channels written as WebDataset shards with ``chada data shard``:

1. ``torchrun --nproc_per_node=2`` (gloo), bf16 autocast (the file's precision), compile off and on;
2. for each: an uninterrupted run; a run killed with SIGKILL mid-epoch (and mid-shard) right after a
   checkpoint, then resumed with ``--resume``; the resumed teacher must be bit-identical to the
   uninterrupted one;
3. ``chada embed`` and ``chada evaluate`` on the last resumed teacher.

Writes ``OUT/rehearsal.json`` (every check and the wall time of every phase); exits 1 if a check fails.

    python benchmarks/rehearsal.py --out /tmp/rehearsal                  # Moyen, the paper's head
    python benchmarks/rehearsal.py --out /tmp/rehearsal --scale test     # a tiny model: the CI test
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import kill_tree  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "idrcell100k_moyen.yaml"
STAINS = ["DAPI", "Actin", "Mito", "ER", "Golgi", "RNA", "Tubulin"]

# Size overrides per scale. Everything else comes from configs/idrcell100k_moyen.yaml unchanged.
SCALES: dict[str, dict[str, Any]] = {
    # Moyen with the paper's head (4096 prototypes); ~15 min on 2 cores
    "full": {"images": 40, "shard_size": 3, "batch": 2, "epochs": 3, "kill_after": 9, "model": [], "head": []},
    # a 2-block, 32-wide model (2 blocks: the second has drop path 0.1, the first none) and a small
    # head: the CI test
    "test": {
        "images": 28, "shard_size": 3, "batch": 2, "epochs": 3, "kill_after": 7,
        "model": ["model.overrides={embed_dim: 32, depth: 2, num_heads: 2}"],
        "head": ["head.out_dim=256", "head.hidden_dim=64", "head.bottleneck_dim=32"],
    },
}  # fmt: skip


def make_corpus(out: Path, n: int, size: int = 224, seed: int = 0) -> Path:
    """``n`` uint16 TIFFs with 1..7 channels (cycling) and a binary label (few large vs many small
    blobs, in every channel), 3/4 train and 1/4 test; returns the manifest path."""
    import pandas as pd
    import tifffile
    from scipy.ndimage import gaussian_filter

    from chada.data.manifest import write_manifest

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c, label = 1 + i % 7, int(rng.integers(0, 2))
        planes = []
        for _ in range(c):
            img = np.zeros((size, size), np.float32)
            k, sigma = (4, 10.0) if label == 0 else (24, 3.0)
            img[rng.integers(0, size, k), rng.integers(0, size, k)] = 1.0
            img = gaussian_filter(img, sigma) + 0.02 * rng.random((size, size), dtype=np.float32)
            planes.append(np.round(img / img.max() * 65535).astype(np.uint16))
        name = f"images/img{i:04d}.tif"
        tifffile.imwrite(out / name, np.stack(planes))
        rows.append({
            "image_id": f"img{i:04d}", "dataset": f"assay_{c}ch", "file": name,
            "channel_names": ";".join(STAINS[:c]), "split": "test" if i % 4 == 3 else "train", "label": label,
        })  # fmt: skip
    return write_manifest(pd.DataFrame(rows), out / "manifest.csv")


ENV = dict(os.environ)  # main() points inductor's compile cache at a fresh folder


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def last_logged_step(log_csv: Path) -> int:
    try:
        lines = log_csv.read_text().strip().splitlines()
        return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0
    except (OSError, ValueError, IndexError):
        return 0


def pretrain_cmd(overrides: list[str], resume: bool = False) -> list[str]:
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--no-python",
    ]
    chada = str(Path(sys.executable).parent / "chada")
    return [
        *torchrun,
        chada,
        "pretrain",
        "--config",
        str(CONFIG),
        *overrides,
        *(["--resume"] if resume else []),
    ]


def killed_run(overrides: list[str], out: Path, kill_after: int, log: Path) -> dict[str, Any]:
    """Start the run, SIGKILL every process of it once step ``kill_after`` is logged (its checkpoint
    was written at ``kill_after - 1``), and report where it stopped."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            pretrain_cmd(overrides), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=ENV
        )
        while proc.poll() is None and last_logged_step(out / "log.csv") < kill_after:
            time.sleep(0.05)
        finished_first = proc.poll() is not None
        kill_tree(proc.pid, signal.SIGKILL)  # torchrun's workers too: they run in sessions of their own
        proc.wait()
    import torch

    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    return {
        "finished_before_kill": finished_first, "killed_at_logged_step": last_logged_step(out / "log.csv"),
        "checkpoint_step": int(ckpt["global_step"]), "checkpoint_epoch": int(ckpt["epoch"]),
        "checkpoint_step_in_epoch": int(ckpt["step_in_epoch"]), "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and bool((x[k] == y[k]).all()) for k in x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--compile", choices=["off", "on", "both"], default="both")
    args = ap.parse_args()
    sc = SCALES[args.scale]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # A cache of its own: the first compiled run compiles from scratch (its time is part of the
    # rehearsal), the killed and resumed runs reuse it, as a restarted job on the same machine would.
    ENV["TORCHINDUCTOR_CACHE_DIR"] = str(out / "inductor_cache")
    report: dict[str, Any] = {
        "scale": args.scale,
        "config": str(CONFIG.relative_to(ROOT)),
        "settings": sc,
        "runs": {},
    }
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    manifest = make_corpus(out / "corpus", sc["images"])
    chada = str(Path(sys.executable).parent / "chada")
    run([chada, "data", "shard", str(manifest), str(out / "shards"), "--shard-size", str(sc["shard_size"]),
         "--dtype", "uint16", "--split", "train"], out / "shard.log")  # fmt: skip
    index = json.loads((out / "shards" / "shards.json").read_text())
    report["corpus"] = {"images": sc["images"], "train_samples": index["n_samples"], "shards": len(index["shards"]),
                        "seconds": time.perf_counter() - t0}  # fmt: skip

    n_train = index["n_samples"]
    steps_per_epoch = n_train // (sc["batch"] * 2)
    size = [
        "data.manifest=null", f"data.shards={out / 'shards'}", f"data.shard_samples_per_epoch={n_train}",
        f"optim.epochs={sc['epochs']}", f"optim.batch_size_per_gpu={sc['batch']}",
        # warm-ups in proportion to the shorter run (the file's are 10 and 50 of 400 epochs)
        "optim.warmup_epochs=1", "dino.warmup_teacher_temp_epochs=2",
        # a shuffle buffer of 2 samples (not 1000) for a corpus of a few shards: the kill then falls
        # part-way through the shard each rank is reading
        "data.shard_shuffle=2", "data.num_workers=1", "run.device=cpu", "run.threads=1", "run.progress=false",
        f"run.save_every_steps={sc['kill_after'] - 1}", "run.log_every_steps=1",
        *sc["model"], *sc["head"],
    ]  # fmt: skip
    report["steps_per_epoch"] = steps_per_epoch
    report["total_steps"] = steps_per_epoch * sc["epochs"]
    ok = True
    for comp in ["off", "on"] if args.compile == "both" else [args.compile]:
        tag = f"compile_{comp}"
        over = [*size, f"run.compile={'true' if comp == 'on' else 'false'}"]
        r: dict[str, Any] = {}
        full, part = out / tag / "full", out / tag / "killed"
        r["uninterrupted_s"] = run(pretrain_cmd([*over, f"run.output_dir={full}"]), out / f"{tag}_full.log")
        r["killed"] = killed_run(
            [*over, f"run.output_dir={part}"], part, sc["kill_after"], out / f"{tag}_killed.log"
        )
        k = r["killed"]
        k["mid_epoch"] = 0 < k["checkpoint_step_in_epoch"] < steps_per_epoch
        # samples each rank consumed in this epoch at the checkpoint: mid-shard unless a multiple of the shard size
        k["mid_shard"] = (k["checkpoint_step_in_epoch"] * sc["batch"]) % sc["shard_size"] != 0
        r["resumed_s"] = run(
            pretrain_cmd([*over, f"run.output_dir={part}"], resume=True), out / f"{tag}_resumed.log"
        )
        r["teacher_bit_identical"] = same_weights(full / "teacher", part / "teacher")
        r["student_bit_identical"] = same_weights(full / "student", part / "student")
        r["tensorboard"] = (full / "tensorboard").is_dir()
        checks = [r["teacher_bit_identical"], r["student_bit_identical"], not k["finished_before_kill"],
                  k["mid_epoch"], k["mid_shard"], r["tensorboard"]]  # fmt: skip
        r["ok"] = all(checks)
        ok = ok and r["ok"]
        report["runs"][tag] = r
        report["teacher"] = str(part / "teacher")
        print(f"{tag}: {json.dumps(r)}", flush=True)
    # the resumed teacher of the last run, embedded and evaluated as a user would
    emb = out / "emb.npz"
    e: dict[str, Any] = {"teacher": report["teacher"]}
    e["embed_s"] = run([chada, "embed", "--model", report["teacher"], "--manifest", str(manifest), "--out", str(emb),
                        "--quiet", "--batch-size", "8"], out / "embed.log")  # fmt: skip
    e["evaluate_s"] = run([chada, "evaluate", "--embeddings", str(emb), "--label-column", "label", "--seeds", "2",
                           "--out", str(out / "eval"), "--no-plots", "--quiet"], out / "evaluate.log")  # fmt: skip
    e["evaluate_files"] = sorted(p.name for p in (out / "eval").iterdir())
    e["ok"] = "results.json" in e["evaluate_files"]
    report["evaluation"] = e
    ok = ok and e["ok"]
    report["ok"] = ok
    report["wall_s"] = time.perf_counter() - t_all
    (out / "rehearsal.json").write_text(json.dumps(report, indent=2))
    print(f"rehearsal {'passed' if ok else 'FAILED'} in {report['wall_s']:.0f} s; {out / 'rehearsal.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

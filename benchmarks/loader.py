"""Data-loader throughput of the DINO multi-crop pipeline against the model's training step.

For 224-px images with 1, 3 and 5 channels, stored as the corpus builder writes them (zlib uint16
TIFF, one page per channel) and as WebDataset shards (uint16 and float16), it measures images/s of ONE
loader core: read/decode, percentile normalisation (TIFF only: shards store normalised pixels),
the multi-crop augmentation of ``configs/idrcell100k_moyen.yaml`` (2 global 224-px views, the authors'
asymmetric recipe) and the trainer's collate, in one process with one torch thread, which is what one
DataLoader worker does. Then it times the trainer's full DINO step (``Trainer.train_step``: teacher
and student forward, backward, clipping, AdamW, EMA) of ChAda-ViT Moyen with the paper's head on the
same machine, and prints how many loader cores keep that step fed, and one H100 (an estimate, see
``h100_images_per_s``).

    python benchmarks/loader.py --out /tmp/loader --images 48 --json loader.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "idrcell100k_moyen.yaml"
STAINS = ["DAPI", "Actin", "Mito", "ER", "Golgi"]

# What we know about an H100 (shared/notes/dependencies.md): "On an H100 (torch 2.11, bf16, B=32,
# 224 px) varlen fwd+bwd took 1.30 ms vs 3.99 ms padded+mask", measured for the attention kernel with
# ChAda-ViT Moyen's width, channel counts 1-10 (the note's CPU table uses that mix).
H100_VARLEN_MS, H100_BATCH, D_MOYEN = 1.30, 32, 192


def h100_images_per_s(channels: list[int]) -> tuple[float, float]:
    """(H100 DINO images/s, the FLOP rate it assumes) for images with these channel counts.

    Assumption (not a measurement): the whole Moyen DINO step runs at the FLOP rate the H100 reached
    in the varlen attention timing above, whose FLOPs are those of q·kᵀ and attn·v, forward and
    backward: 3 x 4·L²·D per image, L = 1 + 196·C, C uniform in 1..10.
    """
    att = [3 * 4 * (1 + 196 * c) ** 2 * D_MOYEN for c in range(1, 11)]
    rate = H100_BATCH * statistics.mean(att) / (H100_VARLEN_MS / 1000)
    per_image = statistics.mean(dino_step_flops(c) for c in channels)
    return rate / per_image, rate


def forward_flops(
    c: int, d: int = 192, depth: int = 12, hidden: int = 768, n: int = 196, p: int = 16
) -> float:
    """benchmarks/README.md's count of one Moyen forward on one image with ``c`` channels."""
    tokens = 1 + c * n
    block = 2 * tokens * (4 * d * d + 2 * d * hidden) + 4 * tokens * tokens * d
    return 2 * c * n * p * p * d + depth * block


def dino_step_flops(c: int) -> float:
    """Student forward + backward on 2 global views (3x a forward each) + teacher forward on both."""
    return 2 * 3 * forward_flops(c) + 2 * forward_flops(c)


def make_corpus(out: Path, channels: int, n: int, seed: int) -> Path:
    import pandas as pd

    from chada.data.corpus import _write_tiff
    from chada.data.manifest import write_manifest

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = np.clip(rng.gamma(2.0, 4000.0, (channels, 224, 224)), 0, 65535).astype(np.uint16)
        _write_tiff(out / f"{i:05d}.tif", img)
        rows.append({"image_id": f"c{channels}_{i}", "dataset": f"c{channels}", "file": f"{i:05d}.tif",
                     "channel_names": ";".join(STAINS[:channels]), "split": "train"})  # fmt: skip
    return write_manifest(pd.DataFrame(rows), out / "manifest.csv")


def augment_from_config() -> Any:
    from chada.data.augment import MultiCropAugment
    from chada.ssl.config import load_config

    a = load_config(CONFIG).augment
    return MultiCropAugment(global_size=a.global_size, local_size=a.local_size, n_global=a.n_global,
                            n_local=a.n_local, global_scale=a.global_scale, local_scale=a.local_scale, **a.extra)  # fmt: skip


def time_items(items: Any, n: int, batch: int, passes: int = 3) -> float:
    """CPU seconds per image to pull ``n`` samples from an iterator and collate them in batches (best
    of ``passes``). CPU time of this one-thread process is what one loader core spends; unlike wall
    time, it does not grow when other work shares the machine."""
    from chada.data.dataset import make_collate

    collate = make_collate(multicrop=True)
    it = iter(items)
    for _ in range(2):  # warm-up: first reads, thread pools
        next(it)
    best = float("inf")
    for _ in range(passes):
        t0 = time.process_time()
        buf = []
        for _ in range(n):
            buf.append(next(it))
            if len(buf) == batch:
                collate(buf)
                buf = []
        if buf:
            collate(buf)
        best = min(best, (time.process_time() - t0) / n)
    return best


def loader_rows(work: Path, images: int, batch: int) -> list[dict[str, Any]]:
    from chada.data.dataset import ManifestDataset
    from chada.data.normalize import normalize_channels
    from chada.data.readers import read_image
    from chada.data.shards import ShardDataset, write_shards

    torch.set_num_threads(1)  # one DataLoader worker = one core, one thread
    aug = augment_from_config()
    rows = []
    for c in (1, 3, 5):
        folder = work / f"c{c}"
        m = make_corpus(folder, c, images, seed=c)
        ds = ManifestDataset(m, transform=aug)

        def forever(ds: Any = ds) -> Any:
            while True:
                for i in range(len(ds)):
                    yield ds[i]

        s_tiff = time_items(forever(), images, batch)
        # where a TIFF image's time goes (same images, no collate)
        parts = {"read": 0.0, "normalize": 0.0, "augment": 0.0}
        for i in range(images):
            t0 = time.process_time()
            x = read_image(folder / f"{i:05d}.tif")
            t1 = time.process_time()
            y = torch.from_numpy(normalize_channels(x, "percentile"))
            t2 = time.process_time()
            aug(y)
            t3 = time.process_time()
            parts["read"] += t1 - t0
            parts["normalize"] += t2 - t1
            parts["augment"] += t3 - t2
        rows.append({"source": "tiff (zlib uint16)", "channels": c, "img_per_s": 1 / s_tiff,
                     **{f"{k}_ms": 1000 * v / images for k, v in parts.items()}})  # fmt: skip
        for dtype in ("uint16", "float16"):
            sh = write_shards(m, folder / f"shards_{dtype}", shard_size=1000, dtype=dtype)
            sds = ShardDataset(sh, transform=aug, shuffle=1000, seed=0)

            def stream(sds: Any = sds) -> Any:
                e = 0
                while True:
                    if hasattr(sds, "set_epoch"):
                        sds.set_epoch(e)
                    yield from sds
                    e += 1

            rows.append(
                {
                    "source": f"shards ({dtype})",
                    "channels": c,
                    "img_per_s": 1 / time_items(stream(), images, batch),
                }
            )
    return rows


def model_row(work: Path, batch: int, precision: str, repeats: int) -> dict[str, Any]:
    """The trainer's DINO step on Moyen with the paper's head, 2 threads, images with 1/3/5 channels."""
    import pandas as pd

    from chada.data.manifest import write_manifest
    from chada.ssl.config import load_config
    from chada.ssl.trainer import Trainer

    frames = [
        pd.read_csv(work / f"c{c}" / "manifest.csv").assign(file=lambda d, c=c: f"c{c}/" + d["file"])
        for c in (1, 3, 5)
    ]
    m = write_manifest(pd.concat(frames), work / "mixed.csv")
    cfg = load_config(CONFIG, [
        f"data.manifest={m}", "run.device=cpu", f"run.precision={precision}", "run.threads=2",
        f"optim.batch_size_per_gpu={batch}", f"run.output_dir={work / f'run_{precision}'}", "data.num_workers=0",
        "run.progress=false",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    trainer.student.train()
    trainer._teacher_mode()
    views = next(trainer._loader(0, 0))["batches"]
    counts = views[0].counts.tolist()
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        trainer.train_step(views, want_stats=False)
        if i:  # the first step allocates and warms up
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {
        "precision": precision,
        "batch": batch,
        "channels": counts,
        "step_s": step,
        "img_per_s": batch / step,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="work folder (corpora, shards)")
    ap.add_argument("--images", type=int, default=48, help="images per channel count")
    ap.add_argument("--batch", type=int, default=8, help="collate batch and model batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed model steps")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), platform.processor()
    )
    flags = next((ln for ln in info if ln.startswith("flags")), "")
    report: dict[str, Any] = {
        "cpu": cpu, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__, "loader": loader_rows(work, args.images, args.batch), "model": [],
    }  # fmt: skip
    print(f"{cpu}; torch {torch.__version__}; one loader core (1 thread); CPU time")
    print("| source | C | img/s per core | read ms | normalise ms | augment ms |")
    print("|---|---|---|---|---|---|")
    for r in report["loader"]:
        extra = " | ".join(f"{r[k]:.1f}" if k in r else "" for k in ("read_ms", "normalize_ms", "augment_ms"))
        print(f"| {r['source']} | {r['channels']} | {r['img_per_s']:.1f} | {extra} |")
    if not args.skip_model:
        for precision in ("fp32", "bf16"):
            report["model"].append(model_row(work, args.batch, precision, args.repeats))
        # a corpus with equal numbers of 1-, 3- and 5-channel images: the mean time per image
        mean_loader = {src: 1 / statistics.mean(1 / r["img_per_s"] for r in report["loader"] if r["source"] == src)
                       for src in dict.fromkeys(r["source"] for r in report["loader"])}  # fmt: skip
        report["loader_mixed_img_per_s"] = mean_loader
        print(
            "\n| model step (Moyen, 2 threads) | img/s | loader cores to feed it: "
            + " | ".join(mean_loader)
            + " |"
        )
        print("|---|---|" + "---|" * len(mean_loader))
        for r in report["model"]:
            cores = " | ".join(f"{r['img_per_s'] / v:.2f}" for v in mean_loader.values())
            print(
                f"| {r['precision']}, batch {r['batch']}, C={r['channels']} | {r['img_per_s']:.2f} | {cores} |"
            )
        h100, rate = h100_images_per_s([1, 3, 5])
        report["h100_estimate"] = {"img_per_s": h100, "assumed_flop_rate": rate,
                                   "cores": {k: h100 / v for k, v in mean_loader.items()}}  # fmt: skip
        print(f"\nH100 (estimate, assumed {rate / 1e12:.0f} TFLOP/s on the whole step): {h100:.0f} img/s -> "
              + ", ".join(f"{k}: {h100 / v:.0f} cores" for k, v in mean_loader.items()))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

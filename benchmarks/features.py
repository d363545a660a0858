"""Per-image time of the hand-made feature extractors on one CPU core; prints a Markdown table.

Target (issue 12): shortcut features of a 224 x 224 3-channel image in at most 20 ms on one core.

Images: channel 0 is the bundled Data Science Bowl 2018 nuclei image (``chada/assets``), resized to
``--size`` and randomly cropped/flipped per image; the other channels are smoothed noise with a few
bright blobs, so the segmentation sees real nuclei and every channel has structure. Without the
bundled asset, channel 0 is synthetic Gaussian nuclei.

    python benchmarks/features.py                  # 224 x 224, 3 channels, all kinds
    python benchmarks/features.py --channels 1 5 10 --kinds shortcut

The process is pinned to one core (``--core``) and BLAS/OpenMP threads are set to 1 before numpy
loads. Reported: median, min and 90th percentile of the per-image wall time, and the median CPU
time, over ``--images`` images after ``--warmup`` warm-up images. On a shared machine the CPU time
and the wall minimum are the least disturbed numbers.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

KINDS = ("shortcut", "handmade", "cellprofiler", "tissue")


def _nuclei_source(size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[2 * size, 2 * size]`` nuclei image in [0, 1] to crop channel 0 from."""
    try:
        from importlib.resources import files

        import tifffile
        from skimage.transform import resize

        raw = tifffile.imread(str(files("chada") / "assets" / "dsb2018_img2d.tif")).astype(np.float32)
        lo, hi = np.percentile(raw, [1, 99.8])
        img = np.clip((raw - lo) / (hi - lo), 0, 1)
        # 512 px -> 2 * size px, so a size-px crop sees a quarter of the field (about 30 nuclei).
        return resize(img, (2 * size, 2 * size), anti_aliasing=True).astype(np.float32)
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        yy, xx = np.mgrid[: 2 * size, : 2 * size]
        img = np.zeros((2 * size, 2 * size), np.float32)
        for cy, cx in rng.uniform(0, 2 * size, (120, 2)):
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
        return np.clip(img, 0, 1)


def make_images(n: int, size: int, channels: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` float32 images ``[channels, size, size]`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    src = _nuclei_source(size, rng)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, src.shape[0] - size + 1, 2)
        planes = [src[y : y + size, x : x + size][:: rng.choice([-1, 1])]]
        for _c in range(channels - 1):
            noise = ndi.gaussian_filter(rng.random((size, size)).astype(np.float32), 2.0)
            noise = (noise - noise.min()) / (np.ptp(noise) + 1e-6)
            planes.append(np.clip(0.6 * noise + 0.4 * np.roll(planes[0], rng.integers(-5, 6), axis=1), 0, 1))
        out.append(np.stack(planes).astype(np.float32))
    return out


def time_kind(kind: str, images: list[np.ndarray], warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``(wall seconds, CPU seconds)`` of ``kind`` (one call per image, like a streaming loader).

    CPU time (``time.process_time``) is what the process itself used: on a loaded machine the wall
    time also counts the time other processes held the core.
    """
    from chada.features.extract import extract_features

    for img in images[:warmup]:
        extract_features([img], kind)
    wall, cpu = [], []
    for img in images[warmup:]:
        t, c = time.perf_counter(), time.process_time()
        extract_features([img], kind)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    return np.asarray(wall), np.asarray(cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--channels", type=int, nargs="+", default=[3])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--images", type=int, default=50, help="timed images per setting")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: do not pin)")
    args = ap.parse_args(argv)
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    pinned = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "n/a"
    print(
        f"# hand-made features: per-image time, {platform.processor() or platform.machine()}, cores used {pinned}"
    )
    print()
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min)" if hasattr(os, "getloadavg") else "")
    print()
    print(
        "| kind | size | channels | features | wall median ms | wall min ms | wall p90 ms | CPU median ms | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    from chada.features.extract import extract_features

    for c in args.channels:
        images = make_images(args.images + args.warmup, args.size, c)
        for kind in args.kinds:
            n_feat = extract_features(images[:1], kind)[0].shape[1]
            wall, cpu = time_kind(kind, images, args.warmup)
            t, tc = wall * 1e3, cpu * 1e3
            target = ""
            if kind == "shortcut" and args.size == 224 and c == 3:
                target = "<= 20 ms (wall median): " + ("met" if np.median(t) <= 20 else "NOT met")
            print(
                f"| {kind} | {args.size} | {c} | {n_feat} | {np.median(t):.1f} | {t.min():.1f} | "
                f"{np.percentile(t, 90):.1f} | {np.median(tc):.1f} | {target} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

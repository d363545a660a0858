"""Cells/s of `chada embed --objects` from files to a Parquet table, against the model alone on the same crops.

The plate of ``embed_memory.py`` (2-channel 256 x 256 fields, 100 nuclei each; ``--cells`` in all).
Two timings in this process:

- files -> table: :func:`chada.encode.embed.embed_manifest` with ``objects`` (read each field and
  its label image, normalise, cut and resize the crops, encode, write Parquet), with 0 and more
  DataLoader workers;
- model alone: the same crops, cut beforehand and held in memory, through the same encoder call
  (``Encoder.encode_samples``, the same batches of ``--batch-size`` cells).

The ratio (files -> table / model alone) says how much the loader and the writer cost: near 1, the
model is the bottleneck.

    flock /tmp/chada-cpu.lock python benchmarks/cells_throughput.py --cells 20000 --workers 0 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from embed_memory import CELLS_PER_FIELD, cpu_model, write_plate  # noqa: E402


def model_alone(manifest: Path, model: str, size: int, crop: int, batch_size: int, device: str) -> tuple[float, int]:
    """(seconds, cells) of the encoder on crops cut beforehand."""
    from chada.data.cells import CellDataset, cells_of
    from chada.data.channels import ChannelPolicy
    from chada.data.dataset import ManifestDataset
    from chada.data.objects import ObjectOptions
    from chada.encode.encoders import resolve_encoder

    enc = resolve_encoder(model, seed=0)
    dev = torch.device(device)
    enc.module = enc.module.to(dev).eval()
    policy = ChannelPolicy.from_model(enc.module)
    cells_ds = CellDataset(ManifestDataset(manifest), ObjectOptions(crop_size=crop), size)
    cells = [c for i in range(len(cells_ds)) for c in cells_of(cells_ds[i])]
    pools = {"cls": "cls", "all": "all"}
    enc.encode_samples(cells[:batch_size], pools, dev, policy)  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(cells), batch_size):
        enc.encode_samples(cells[s : s + batch_size], pools, dev, policy)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, len(cells)


def files_to_table(manifest: Path, out: Path, model: str, size: int, crop: int, batch_size: int, workers: int,
                   device: str) -> tuple[float, int]:  # fmt: skip
    from chada.data.objects import ObjectOptions
    from chada.encode.embed import embed_manifest
    from chada.encode.options import ImageOptions, OutputOptions, RunOptions

    t0 = time.perf_counter()
    run = RunOptions(batch_size=batch_size, num_workers=workers, progress=False, device=device)
    res = embed_manifest(model, manifest, out, image=ImageOptions(size=size), run=run, output=OutputOptions(resume=False),
                         objects=ObjectOptions(crop_size=crop))  # fmt: skip
    return time.perf_counter() - t0, len(res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--model", default="chada_vit_test")
    ap.add_argument("--image-size", type=int, default=16, help="crops are resized to this size")
    ap.add_argument("--crop-size", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("/tmp/cells_throughput"))
    args = ap.parse_args()
    manifest = write_plate(args.out, args.cells // CELLS_PER_FIELD)
    sec, n = model_alone(manifest, args.model, args.image_size, args.crop_size, args.batch_size, args.device)
    alone = n / sec
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    print(f"CPU: {cpu_model()} ({torch.get_num_threads()} torch threads); GPU: {gpu}; {args.model}, "
          f"{args.crop_size}-px crops -> {args.image_size} px, 2 channels, --batch-size {args.batch_size}")  # fmt: skip
    print("| route | workers | cells | seconds | cells/s | / model alone |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| model alone (crops in memory) | - | {n:,} | {sec:.1f} | {alone:,.0f} | 1.00 |")
    for w in args.workers:
        sec_w, n_w = files_to_table(manifest, args.out / f"cells_w{w}.parquet", args.model, args.image_size,
                                    args.crop_size, args.batch_size, w, args.device)  # fmt: skip
        print(f"| files -> Parquet (`chada embed --objects`) | {w} | {n_w:,} | {sec_w:.1f} | {n_w / sec_w:,.0f} | "
              f"{(n_w / sec_w) / alone:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

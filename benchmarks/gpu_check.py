"""One command for the first person with a GPU: parity, DDP and resume, embed, compile, throughput.

Usage (from the repository root, with chada installed in the active environment)::

    python benchmarks/gpu_check.py                 # on a CUDA machine: fits in 5 minutes (280 s default budget)
    python benchmarks/gpu_check.py --dry-run       # on CPU: the same code paths, test model, tiny sizes

Each row is printed (stderr) as soon as it is measured, and ``--out``/gpu_check.json (default
``gpu_check_out/``) is rewritten atomically after every row: a run killed by its time limit, the OOM
killer or a segfault leaves the rows and sections it finished (``sections_done``). At the end one
markdown table goes to stdout. Without CUDA and without ``--dry-run`` it prints one line and exits 0.

Sections, most important first, each in its share of ``--budget`` (default 280 s, so that start-up
and the last row still fit in 5 minutes):

1. ``parity``: packed vs padded and varlen vs padded, fp32 (relative tolerance) and bf16 (CLS
   cosine), every layer's real tokens, chada_vit_moyen at 224 px on a mixed batch; the varlen row says
   which kernel ran (``varlen_attn``, or the grouped fallback below compute capability 8.0).
2. ``ddp``: ``chada data synth`` + ``shard``, then ``chada pretrain`` under torchrun (2 NCCL ranks;
   1 process on a one-GPU machine, where the 2-rank attempt is skipped): an uninterrupted run, the same
   run interrupted half-way and resumed (teachers compared: bit-exact on CPU, within
   ``gpu_training.RESUME_TOL_CUDA`` on CUDA), and the half-way checkpoint resumed with another number of
   GPUs (1 visible GPU, or none on a one-GPU machine). Each launch is its own process group, killed as
   a group at the time box.
3. ``embed``: ``chada embed --device cuda`` and ``--device cuda:N`` of the exported teacher, against
   ``--device cpu`` (CLS cosine).
4. ``train``: a short DINO run with ``model.overrides.attention=varlen``, drop path 0.1 and ``run.compile=true``.
5. ``compile``: forward(+backward) with the trainer's per-block compile (``compile_blocks``), each
   row in its own process with a timeout; reports the time of a second batch mix and the graphs it added.
6. ``grid``: images/s and peak memory for mixes idrcell/all1/all10, fp32/bf16, packed/padded/varlen.

``--dry-run`` runs every section on CPU with chada_vit_test at 32 px (gloo, 4 DINO steps with a resume
after 2; compile rows trace with dynamo's eager backend: inductor needs minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_model_checks as checks  # noqa: E402
import gpu_training as training  # noqa: E402
from gpu_runs import error_line, run_group  # noqa: E402

SECTIONS = ("parity", "ddp", "embed", "train", "compile", "grid")
# Shares of the budget (of what is left when the section starts, over the sections still to run).
SHARES = {"parity": 0.05, "ddp": 0.4, "embed": 0.1, "train": 0.13, "compile": 0.16, "grid": 0.16}


# ----------------------------------------------------------------------------- settings
def settings(dry: bool) -> dict[str, Any]:
    """Sizes of every section: the real GPU run, or the CPU dry run."""
    if dry:
        return dict(
            device="cpu", model="chada_vit_test", image_size=32, parity_counts=[1, 3, 10, 2],
            infer_bs=4, train_bs=2, warmup=1, repeats=2, synth_n=8, synth_size=32, shard_size=4,
            per_gpu=4, steps_per_epoch=2, total_steps=4,
        )  # fmt: skip
    return dict(
        device="cuda", model="chada_vit_moyen", image_size=224, parity_counts=[1, 3, 10, 2, 5, 1],
        infer_bs=64, train_bs=32, warmup=3, repeats=10, synth_n=48, synth_size=224, shard_size=16,
        per_gpu=32, steps_per_epoch=6, total_steps=12,
    )  # fmt: skip


class Deadline:
    """A time box: ``left()`` seconds remain; sections skip what no longer fits."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Recorder:
    """The rows so far: each printed when it comes and the JSON rewritten atomically after it."""

    def __init__(self, path: Path, env: dict[str, Any], s: dict[str, Any]) -> None:
        self.path, self.t0 = path, time.perf_counter()
        self.payload: dict[str, Any] = {
            "env": env,
            "settings": s,
            "argv": sys.argv,
            "sections_done": [],
            "rows": [],
        }
        self.save()

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.payload["rows"]

    def add(self, section: str, config: str, status: str, **fields: Any) -> None:
        row = dict(section=section, config=config, status=status, **fields)
        self.rows.append(row)
        print(render_row(row), file=sys.stderr, flush=True)
        self.save()

    def section_done(self, name: str) -> None:
        self.payload["sections_done"].append(name)
        self.save()

    def save(self) -> None:
        self.payload["wall_s"] = time.perf_counter() - self.t0
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.payload, fh, indent=2, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# ----------------------------------------------------------------------------- environment
def environment(s: dict[str, Any]) -> dict[str, Any]:
    from chada.models.precision import cpu_bf16_feature, cpu_model_name, read_cpu_flags

    flags = read_cpu_flags()
    env: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": cpu_model_name(),
        "cpu_bf16": {f: f in flags for f in ("avx512_bf16", "amx_bf16")},
        "cpu_bf16_feature": cpu_bf16_feature(),
        "dry_run": s["device"] == "cpu",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
        with contextlib.suppress(Exception):  # int in some builds, tuple in others
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return env


# ----------------------------------------------------------------------------- grid and compile
def _measure_in_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    p = run_group([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)], timeout)
    if p.returncode != 0:
        raise RuntimeError(error_line(p.stderr, p.stdout))
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure_rows(
    section: str, specs: list[dict[str, Any]], box: Deadline, add: Any, timeout: float | None
) -> None:
    """One row per spec: in this process (``timeout`` None) or each in its own process group."""
    for sp in specs:
        name = checks.spec_name(sp)
        left = box.left()
        if left <= (timeout or 0) * 0.5:
            add(section, name, "skipped (time box)")
            continue
        try:
            r = checks.measure(sp) if timeout is None else _measure_in_subprocess(sp, min(timeout, left))
        except subprocess.TimeoutExpired:
            add(section, name, f"timeout after {min(timeout or 0, left):.0f} s")
            continue
        except Exception as exc:
            add(section, name, f"error: {checks.first_line(exc)}")
            continue
        finally:
            checks.cuda_call(sp["device"], torch.cuda.empty_cache)
        add(section, name, "ok", **checks.row_fields(sp, r))


# ----------------------------------------------------------------------------- report
def render_row(r: dict[str, Any]) -> str:
    ips = f"{r['images_per_s']:.1f}" if r.get("images_per_s") is not None else ""
    peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else ""
    return f"| {r['section']} | {r['config']} | {r['status']} | {ips} | {peak} | {r.get('detail', '')} |"


def render(env: dict[str, Any], rows: list[dict[str, Any]], wall: float) -> str:
    head = f"gpu_check: {env.get('gpu', 'no GPU (dry run on CPU)')}; torch {env['torch']} (CUDA {env['cuda']}); " \
           f"CPU {env['cpu']} (avx512_bf16 {env['cpu_bf16']['avx512_bf16']}, amx_bf16 {env['cpu_bf16']['amx_bf16']}); " \
           f"{env['date']}; {wall:.0f} s"  # fmt: skip
    lines = [
        head,
        "",
        "| section | config | status | img/s | peak MB | detail |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(lines + [render_row(r) for r in rows])


def run_section(
    name: str, s: dict[str, Any], box: Deadline, work: Path, rec: Recorder, state: dict[str, Any], args: Any
) -> None:
    if name == "parity":
        checks.parity(s, box.left, rec.add)
    elif name == "ddp":
        state["run"] = training.ddp(s, box.left, work, rec.add)
    elif name == "embed":
        training.embed(s, box.left, work, state.get("run"), rec.add)
    elif name == "train":
        training.varlen_training(s, box.left, work, rec.add)
    elif name == "compile":
        measure_rows("compile", checks.compile_specs(s), box, rec.add, args.compile_timeout)
    elif name == "grid":
        measure_rows("grid", checks.grid_specs(s), box, rec.add, None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="run every section on CPU with the test model")
    ap.add_argument(
        "--out", type=Path, default=Path("gpu_check_out"), help="folder for the JSON and the runs"
    )
    ap.add_argument(
        "--budget", type=float, default=280.0, help="seconds for all sections (5 min with start-up)"
    )
    ap.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma list, in order, of {', '.join(SECTIONS)}"
    )
    ap.add_argument("--compile-timeout", type=float, default=90.0, help="seconds per run.compile=true row")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(checks.measure(json.loads(args.worker))))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check; "
              "`--dry-run` exercises the same code on CPU")  # fmt: skip
        return 0
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    s = settings(args.dry_run)
    if args.dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    budget = Deadline(args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(args.out / "gpu_check.json", environment(s), s)
    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.out, prefix="work.", ignore_cleanup_errors=True) as work:
        for i, name in enumerate(sections):
            share = SHARES[name] / sum(SHARES[n] for n in sections[i:])
            box = Deadline(budget.left() * share)
            print(f"gpu_check: {name} ({box.left():.0f} s box)", file=sys.stderr, flush=True)
            try:
                run_section(name, s, box, Path(work), rec, state, args)
            except Exception as exc:  # a section's crash is one row; the others still run
                rec.add(name, "section", f"error: {checks.first_line(exc)}")
            rec.section_done(name)
    table = render(rec.payload["env"], rec.rows, time.perf_counter() - rec.t0)
    print(table)
    print(f"\nraw results: {rec.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

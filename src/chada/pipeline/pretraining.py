"""The quickstart's DINO pretrainings: one per encoder (and pretraining seed), side by side in spawned
processes. Their warnings reach the parent's console named after their run (:mod:`.console`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from chada.pipeline.settings import ENCODERS, QuickstartSettings, Stages

__all__ = ["pretrain_all", "stage_pretrain"]


def _pretrain_config() -> Path:
    from importlib.resources import files

    return Path(str(files("chada") / "configs" / "quickstart.yaml"))


def _model_overrides(model_name: str) -> list[str]:
    """The config's ``model.overrides`` that ``model_name`` has: the Inter-Channel ViT has no positional
    embedding, so the shared recipe's ``pos_embed_std`` does not apply to it."""
    import dataclasses

    from chada.models.registry import get_arch, model_spec
    from chada.ssl.config import load_config

    fields = {f.name for f in dataclasses.fields(get_arch(model_spec(model_name)[0]).config_class)}
    keep = {k: v for k, v in load_config(_pretrain_config()).model.overrides.items() if k in fields}
    return [f"model.overrides={json.dumps(keep)}"]


def stage_pretrain(
    s: QuickstartSettings, manifests: dict[str, str], encoder: str, model_name: str, quiet: bool = False,
    seed: int = 0, run: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """DINO for one encoder (run ``run``, default the encoder's name, with ``run.seed=seed``); ``quiet``
    (parallel runs: 1 thread each) turns off its progress bar and TensorBoard."""
    from chada.pipeline.console import encoder_warnings
    from chada.ssl import load_config, pretrain

    run = run or encoder
    out = s.out / "pretrain" / run
    epochs = s.epochs_of(encoder)
    overrides = [
        f"model.name={model_name}",
        *_model_overrides(model_name),
        f"data.manifest={manifests['pretrain_corpus']}",
        "data.split=train",
        f"data.size={s.synth_size}",
        f"optim.epochs={epochs}",
        f"run.output_dir={out}",
        "run.device=cpu",
        "data.num_workers=0",
        f"run.seed={seed}",
    ]
    recipe = load_config(_pretrain_config())
    for key, warm in (("optim.warmup_epochs", recipe.optim.warmup_epochs),
                      ("dino.warmup_teacher_temp_epochs", recipe.dino.warmup_teacher_temp_epochs)):  # fmt: skip
        if warm > epochs:  # a short run (--fast, --epochs): warm-ups cannot be longer than the run
            overrides.append(f"{key}={epochs}")
    if s.threads or quiet:
        overrides.append(f"run.threads={s.threads or 1}")
    if s.steps_cap:
        overrides.append(f"run.max_steps={s.steps_cap}")
    if s.fast or quiet:
        overrides += ["run.tensorboard=false", "run.progress=false"]
    t0 = time.perf_counter()
    with encoder_warnings(run):  # "pretrain one_channel_vit: step 340: the teacher looks collapsed ..."
        folder = pretrain(_pretrain_config(), overrides=overrides, resume=(out / "checkpoint.pt").exists())
    teacher, init = Path(folder) / "teacher", Path(folder) / "init"
    for f in (teacher, init):
        if not (f / "config.json").exists():
            raise RuntimeError(f"pretraining of {run} finished without exporting {f}")
    return {
        "teacher": str(teacher), "untrained": str(init), "epochs": epochs, "output": str(folder),
        "seconds": time.perf_counter() - t0, "parallel": quiet, "encoder": encoder, "seed": seed,
    }  # fmt: skip


def pretrain_all(
    s: QuickstartSettings, stages: Stages, manifests: dict[str, str], log_queue: Any = None
) -> dict[str, dict[str, Any]]:
    """Pretrain every run of :meth:`QuickstartSettings.runs`; with ``jobs > 1`` they run at once in
    spawned processes, 1 thread each, so that on 2 cores both cores stay busy until the last run ends.
    ``log_queue`` (:func:`chada.pipeline.console.quickstart_console`) carries their messages back."""
    import multiprocessing as mp

    runs = s.runs()

    def one(run: str, quiet: bool = False) -> tuple:
        enc, seed = runs[run]
        return (s, manifests, enc, ENCODERS[enc], quiet, seed, run)

    # Three 1-thread runs on 2 cores finish sooner than two at a time: no core idles at the end.
    jobs = s.jobs if s.jobs is not None else (len(ENCODERS) if (os.cpu_count() or 1) > 1 else 1)
    pending = [run for run in runs if stages.done(f"pretrain_{run}") is None]
    if jobs <= 1 or len(pending) <= 1:
        return {run: stages.run(f"pretrain_{run}", lambda run=run: stage_pretrain(*one(run))) for run in runs}
    n = min(jobs, len(pending))
    stages.log(f"[pretrain] {', '.join(pending)}: {n} at once; logs in {s.out / 'pretrain'}/<run>/log.csv")
    pool = mp.get_context("spawn").Pool(n, initializer=_worker_init, initargs=(os.getpid(), log_queue))
    try:
        jobs_ = {run: pool.apply_async(stage_pretrain, one(run, True)) for run in pending}
        _watch_pretraining(s, jobs_, pool)
        # Stages.run records each result; a failed run raises here with its own traceback.
        results = {run: stages.run(f"pretrain_{run}", lambda run=run: jobs_[run].get()) for run in runs}
        pool.close()
        return results
    finally:
        # On an error or Ctrl-C, stop the other runs now (their checkpoints let a re-run resume them).
        pool.terminate()
        pool.join()


def _worker_init(parent_pid: int, log_queue: Any) -> None:
    """Pool-worker initializer: messages to the parent's console, and exit with the parent."""
    if log_queue is not None:
        from chada.pipeline.console import worker_logging

        worker_logging(log_queue)
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: exit when the quickstart process dies (e.g. killed), instead of training
    on as an orphan."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _watch_pretraining(s: QuickstartSettings, jobs: dict[str, Any], pool: Any = None) -> None:
    """One progress bar per encoder (epochs done, read from each run's ``log.csv``) until all finish or
    one fails. A pool process that dies (killed, out of memory) never reports back; the pool quietly
    replaces it, so its job would wait forever: that ends the run with a RuntimeError instead."""
    from tqdm.auto import tqdm

    workers = list(getattr(pool, "_pool", []))  # the processes the jobs were handed to
    total = {enc: s.epochs_of(enc) for enc in jobs}
    # smoothing=0: the ETA is the remaining epochs at the run's average speed so far.
    # A resumed run starts its bar (and its speed) at the epoch its checkpoint reached.
    bars = {
        enc: tqdm(total=total[enc], desc=f"dino {enc}", unit="epoch", position=i, leave=True, disable=s.fast,
                  dynamic_ncols=True, smoothing=0, mininterval=0, initial=_last_epoch(s.out / "pretrain" / enc / "log.csv"),
                  bar_format="{desc:<26}{percentage:3.0f}%|{bar}| {n:.1f}/{total} epochs [{elapsed}<{remaining}]")
        for i, enc in enumerate(jobs)
    }  # fmt: skip
    try:
        while True:
            for enc, bar in bars.items():
                done = total[enc] if jobs[enc].ready() else _last_epoch(s.out / "pretrain" / enc / "log.csv")
                bar.update(max(0.0, done - bar.n))
                bar.refresh()
            finished = [j for j in jobs.values() if j.ready()]
            if len(finished) == len(jobs) or any(not j.successful() for j in finished):
                return
            dead = [w for w in workers if w.exitcode is not None]
            if dead:
                pending = [enc for enc, j in jobs.items() if not j.ready()]
                raise RuntimeError(
                    f"a pretraining process (pid {dead[0].pid}) ended with exit code {dead[0].exitcode} (killed, or out "
                    f"of memory?) before {', '.join(pending)} finished; logs in {s.out / 'pretrain'}. Run the same "
                    "`chada quickstart` command again: it resumes from the checkpoints"
                )
            time.sleep(2.0)
    finally:
        for bar in bars.values():
            bar.close()


def _last_epoch(log_csv: Path) -> float:
    """The epoch column of the last row of a DINO ``log.csv`` (0 before the first row)."""
    try:
        with open(log_csv, "rb") as f:
            f.seek(max(0, log_csv.stat().st_size - 4096))
            last = f.read().decode(errors="replace").strip().splitlines()[-1].split(",")
        return float(last[1])
    except (OSError, IndexError, ValueError):
        return 0.0

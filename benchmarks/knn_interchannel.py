"""kNN accuracy of a DINO teacher vs the same architecture at random init, on ``label`` and ``interchannel_label``.

Either pretrains with a config + overrides (``chada pretrain`` semantics) or loads a teacher folder, then
embeds an evaluation manifest at ``--embed-size`` (CLS pool, as the quickstart does), fits kNN on its
train split and scores its test split. Random-init baselines are built exactly like the trainer builds
the backbone (``torch.manual_seed(seed)`` then :func:`chada.ssl.trainer.build_backbone`) for the
pretraining seed and ``--extra-seeds``.

Without ``--eval-manifest`` a fresh synthetic evaluation set is generated (markers_2ch + coloc_5ch,
``--eval-n`` images per assay, seed ``--eval-seed``, ``--marker-pattern``; a seed other than the pretraining data's gives
images the teacher never saw).

Usage (the README's Appendix A numbers; ``--make-corpus`` builds the quickstart's own corpus)::

    python benchmarks/knn_interchannel.py --make-corpus /tmp/knn/corpus --work /tmp/knn --eval-n 1200 \\
        run.output_dir=/tmp/knn/run run.seed=0 data.num_workers=0 run.progress=false run.tensorboard=false
    python benchmarks/knn_interchannel.py --config configs/quickstart.yaml \\
        --work /tmp/knn data.manifest=/tmp/corpus.csv data.size=64 run.output_dir=/tmp/knn/run
    python benchmarks/knn_interchannel.py --config configs/quickstart.yaml --teacher /tmp/knn/run/teacher \\
        --work /tmp/knn data.manifest=/tmp/corpus.csv
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _embed(model, manifest: Path, out: Path, size: int, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """CLS features ``[N, D]`` and the meta DataFrame of one split."""
    from chada.encode.embed import embed_manifest
    from chada.encode.options import ImageOptions, OutputOptions, RunOptions, Selection

    es = embed_manifest(model, manifest, out, ("cls",), image=ImageOptions(size=size), run=RunOptions(progress=False),
                        select=Selection(split=split), output=OutputOptions(resume=False))  # fmt: skip
    return np.asarray(es.features["cls"], dtype=np.float32), es.meta


def _scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> dict[str, float]:
    from sklearn.neighbors import KNeighborsClassifier

    from chada.eval.knn import knn_accuracy

    res = {}
    for k in (1, 5, 20):
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(xtr, ytr)
        res[f"k{k}"] = float((clf.predict(xte) == yte).mean())
    res["dino_k20"] = knn_accuracy(xtr, ytr, xte, yte, k=20, temperature=0.07)
    return res


def _labels(meta, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask of rows with a value, int labels of those rows)."""
    col = meta[column] if column in meta.columns else pd.Series([None] * len(meta))
    v = pd.to_numeric(col.astype(str).replace({"": None, "<NA>": None, "None": None, "nan": None}), errors="coerce")
    mask = v.notna().to_numpy()
    return mask, v[mask].astype(int).to_numpy()


def evaluate(model, manifest: Path, work: Path, tag: str, size: int) -> dict[str, dict[str, float]]:
    """``{task: {metric: accuracy, "n_test": n}}`` for ``label`` and ``interchannel_label``."""
    xtr, mtr = _embed(model, manifest, work / f"{tag}_train.npz", size, "train")
    xte, mte = _embed(model, manifest, work / f"{tag}_test.npz", size, "test")
    out = {}
    for task in ("label", "interchannel_label"):
        ktr, ytr = _labels(mtr, task)
        kte, yte = _labels(mte, task)
        if len(ytr) == 0 or len(yte) == 0:
            continue
        out[task] = _scores(xtr[ktr], ytr, xte[kte], yte) | {"n_test": int(len(yte)), "n_train": int(len(ytr))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, as for `chada pretrain`")
    p.add_argument("--teacher", help="an exported teacher folder: skip pretraining")
    p.add_argument(
        "--make-corpus", metavar="DIR",
        help="build the quickstart's pretraining corpus (its data stage, --marker-pattern) in DIR and use it "
        "as data.manifest",
    )  # fmt: skip
    p.add_argument("--work", required=True, help="folder for the evaluation set and embeddings")
    p.add_argument("--eval-manifest", help="default: generate a synthetic markers set under WORK (reused if there)")
    p.add_argument("--eval-n", type=int, default=600, help="images per assay of the generated set")
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--eval-synth-size", type=int, default=64)
    p.add_argument(
        "--marker-pattern", choices=("spots", "domain"), default="domain",
        help="marker pattern of the generated set (match the pretraining corpus)",
    )  # fmt: skip
    p.add_argument("--embed-size", type=int, default=32)
    p.add_argument("--extra-seeds", type=int, nargs="*", default=[1, 2], help="put after the overrides")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)

    import torch

    from chada.ssl.config import load_config
    from chada.ssl.trainer import build_backbone

    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.make_corpus:
        from chada.pipeline.quickstart import QuickstartSettings, stage_data

        corpus = Path(a.make_corpus) / "data" / "pretrain_corpus.csv"
        if not corpus.exists():
            stage_data(QuickstartSettings.make(a.make_corpus, marker_pattern=a.marker_pattern))
        a.overrides = [*a.overrides, f"data.manifest={corpus}", "data.split=train", "data.size=64"]
    cfg = load_config(a.config, a.overrides)

    if a.eval_manifest:
        manifest = Path(a.eval_manifest)
    else:
        manifest = work / f"eval_{a.marker_pattern}_n{a.eval_n}_s{a.eval_seed}" / "manifest.csv"
        if not manifest.exists():
            from chada.data import synth

            synth.generate(
                manifest.parent, n_per_assay=a.eval_n, size=a.eval_synth_size, seed=a.eval_seed,
                assays=["markers_2ch", "coloc_5ch"], marker_pattern=a.marker_pattern,
            )  # fmt: skip

    if a.teacher is not None and not (Path(a.teacher) / "config.json").exists():
        p.error(f"--teacher {a.teacher}: not an exported model folder (no config.json)")
    timing = {}
    teacher = a.teacher
    if teacher is None:
        from chada.ssl import pretrain

        t0, c0 = time.perf_counter(), time.process_time()
        folder = pretrain(a.config, overrides=a.overrides)
        timing = {"pretrain_wall_s": time.perf_counter() - t0, "pretrain_cpu_s": time.process_time() - c0}
        teacher = str(Path(folder) / "teacher")
        if not (Path(teacher) / "config.json").exists():
            raise SystemExit(f"pretraining exported no teacher in {teacher} (stopped early by run.max_steps?)")

    results: dict[str, dict] = {"teacher": evaluate(teacher, manifest, work, "teacher", a.embed_size)}
    for seed in [cfg.run.seed, *a.extra_seeds]:
        torch.manual_seed(seed)
        model = build_backbone(cfg).eval()
        results[f"random_seed{seed}"] = evaluate(model, manifest, work, f"random{seed}", a.embed_size)

    rand = [k for k in results if k.startswith("random")]
    print(f"teacher: {teacher}   eval: {manifest}   embed {a.embed_size} px, CLS, train -> test")
    if timing:
        print(f"pretraining: wall {timing['pretrain_wall_s']:.0f} s, CPU {timing['pretrain_cpu_s']:.0f} s (this process)")
    metrics = ("k1", "k5", "k20", "dino_k20")
    for task in ("label", "interchannel_label"):
        if task not in results["teacher"]:
            continue
        n = results["teacher"][task]["n_test"]
        print(f"\n{task}  (n_test={n}, n_train={results['teacher'][task]['n_train']})")
        print(f"{'model':<16}" + "".join(f"{m:>16}" for m in metrics))
        rows = [(k, results[k][task]) for k in results]
        mean = {m: float(np.mean([results[k][task][m] for k in rand])) for m in metrics}
        rows.append(("random_mean", mean))
        for name, r in rows:
            # binomial standard error of one accuracy over n_test (for the mean: over 3 x n_test draws)
            cells = "".join(f"{r[m]:>9.3f} ±{math.sqrt(r[m] * (1 - r[m]) / n):.3f}" for m in metrics)
            print(f"{name:<16}{cells}")
        print(f"{'teacher - rand':<16}" + "".join(f"{results['teacher'][task][m] - mean[m]:>+16.3f}" for m in metrics))
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "timing": timing, "teacher": teacher}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

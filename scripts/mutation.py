"""Mutation testing of one chada module with mutmut 3 (see docs/testing.md).

    pip install -e ".[test,mutation]"                 # mutmut, into your dev environment only
    flock /tmp/chada-cpu.lock python scripts/mutation.py models/layers.py
    python scripts/mutation.py --list                  # the modules and the tests each one runs
    python scripts/mutation.py models/layers.py --survivors   # diffs of the survivors of the last run

Each module runs in its own scratch folder ``.mutation/<module>/`` (git-ignored): a fresh copy of
``src/`` and ``tests/`` and a ``pyproject.toml`` whose ``[tool.mutmut]`` section mutates that one file
and runs only the test files listed for it in ``MODULES`` below (the fast ones, ``-m "not slow"``).
mutmut then runs, for each mutant, only the tests that called the mutated function, and stops at
the first failure. A fresh folder every run (unless ``--resume``) keeps mutmut's result cache from
reporting verdicts that tests added since then would change.

The summary line (total / killed / survived / timeout / other, and the killed share) is printed and
written to ``.mutation/<module>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"

# module (relative to src/chada) -> the test files that exercise it
_MODEL_CORE = ["tests/models/test_model.py", "tests/models/test_packed.py", "tests/models/test_model_math.py"]
_BASELINE_TESTS = [
    "tests/models/test_baselines.py",
    "tests/models/test_baselines_math.py",
    "tests/models/test_baselines_attention.py",
    "tests/models/test_model.py",
]
# the dense modules' unit tests; the end-to-end `chada evaluate` / `chada segment` runs of
# tests/tasks/dense/test_segment.py (a 6 s fixture per mutant) are in no selection
_DENSE_TESTS = [
    "tests/tasks/dense/test_dense.py",
    "tests/tasks/dense/test_paired.py",
    "tests/tasks/dense/test_mutants.py",
    "tests/tasks/dense/test_mutants_config.py",
    "tests/tasks/dense/test_mutants_report.py",
    "tests/tasks/dense/test_mutants_data.py",
    "tests/tasks/dense/test_mutants_heads.py",
    "tests/tasks/dense/test_mutants_probe.py",
    "tests/tasks/dense/test_mutants_figure.py",
    "tests/tasks/dense/test_mutants_task.py",
    "tests/tasks/dense/test_mutants_features.py",
]
_DENSE_UNITS = [
    *(
        f"tests/tasks/dense/test_dense.py::{t}"
        for t in (
            "test_iou_dice_by_hand",
            "test_bootstrap_interval_brackets_the_score_and_collapses_on_identical_tiles",
            "test_object_scores_by_hand",
            "test_otsu_on_a_two_level_image",
        )
    ),
    "tests/tasks/dense/test_paired.py",
    "tests/tasks/dense/test_mutants.py",
    "tests/tasks/dense/test_mutants_paired.py",
    "tests/tasks/dense/test_mutants_metrics.py",
]
MODULES: dict[str, list[str]] = {
    "models/layers.py": _MODEL_CORE
    + [
        "tests/models/test_layers.py",
        "tests/models/test_precision.py",
        "tests/models/test_convert.py",
        "tests/models/test_baselines.py",
    ],
    "models/chada_vit.py": _MODEL_CORE + ["tests/models/test_precision.py", "tests/models/test_convert.py"],
    "models/chada_paths.py": _MODEL_CORE + ["tests/models/test_host_syncs.py"],
    "models/batch.py": _MODEL_CORE + ["tests/models/test_batch.py"],
    "models/dense.py": _MODEL_CORE + ["tests/models/test_dense.py", "tests/models/test_baselines.py"],
    "models/precision.py": ["tests/models/test_precision.py"],
    "models/registry.py": [
        "tests/models/test_hub.py",
        "tests/models/test_model.py",
        "tests/models/test_baselines.py",
    ],
    "models/hub.py": [
        "tests/models/test_hub.py",
        "tests/models/test_model.py",
        "tests/models/test_baselines.py",
        "tests/data/test_channels.py",
    ],
    "models/convert.py": ["tests/models/test_convert.py"],
    **{
        f"models/{name}.py": _BASELINE_TESTS
        for name in ("standard_vit", "one_channel_vit", "inter_channel_vit", "fixed_channel_vit")
    },
    "data/channels.py": ["tests/data/test_channels.py"],
    "data/channel_names.py": ["tests/data/test_channels.py", "tests/data/test_manifest.py"],
    "ssl/dino.py": ["tests/ssl/test_dino.py", "tests/ssl/test_dino_mutants.py", "tests/ssl/test_recipe.py"],
    "ssl/schedules.py": [
        "tests/ssl/test_schedules.py",
        "tests/ssl/test_dino_mutants.py",
        "tests/ssl/test_recipe.py",
    ],
    "eval/knn.py": ["tests/eval/test_metrics.py", "tests/eval/test_mutants.py"],
    "eval/probes.py": ["tests/eval/test_metrics.py", "tests/eval/test_mutants.py"],
    "eval/diagnostics.py": ["tests/eval/test_diagnostics.py", "tests/eval/test_mutants.py"],
    # the end-to-end `chada evaluate` tests (tests/eval/test_protocol.py) call every function here:
    # left out, they made each mutant of run_feature_tasks run for minutes
    "eval/protocol.py": [
        "tests/eval/test_protocol_units.py",
        "tests/eval/test_intervals.py",
        "tests/eval/test_mutants_protocol.py",
    ],
    "ssl/config.py": [
        "tests/ssl/test_config.py",
        "tests/core/test_config_reader.py",
        "tests/ssl/test_mutants_config.py",
    ],
    "ssl/resume_rules.py": ["tests/ssl/test_mutants_resume.py"],
    # split out of ssl/config.py (PretrainConfig.validate) and eval/protocol.py after ruff format: same tests
    "ssl/config_checks.py": [
        "tests/ssl/test_config.py",
        "tests/core/test_config_reader.py",
        "tests/ssl/test_mutants_config.py",
    ],
    "eval/feature_files.py": [
        "tests/eval/test_protocol_units.py",
        "tests/eval/test_intervals.py",
        "tests/eval/test_mutants_protocol.py",
    ],
    # test_protocol.py's end-to-end test (19 s) and tests/tasks/dense/test_segment.py (a 6 s `chada segment`
    # fixture per mutant: 739 s a run) are left out; the rest runs in 23 s (a node id is a selection too)
    "tasks/evaluation.py": [
        "tests/eval/test_protocol.py::test_evaluate_quick_form",
        "tests/eval/test_protocol.py::test_run_evaluation_api_and_errors",
        "tests/tasks/test_mutants_evaluation.py",
        "tests/tasks/test_mutants_evaluation_run.py",
    ],
    **{
        f"tasks/dense/{name}.py": _DENSE_TESTS
        for name in ("config", "data", "features", "figure", "heads", "probe", "report", "task")
    },
    # the scores are pure functions: their unit tests only (the end-to-end runs call them too, for seconds)
    "tasks/dense/metrics.py": _DENSE_UNITS,
    "tasks/dense/paired.py": _DENSE_UNITS,
    # pipeline/: unit tests only; tests/pipeline/test_quickstart.py (a whole quickstart) and
    # tests/pipeline/test_profile_stage.py (a 40 s module fixture) would rerun per mutant
    "pipeline/caveats.py": ["tests/pipeline/test_paired_section.py", "tests/pipeline/test_mutants_text.py"],
    "pipeline/console.py": ["tests/pipeline/test_console.py", "tests/pipeline/test_mutants_console.py"],
    "pipeline/dense_stage.py": ["tests/pipeline/test_mutants_stages.py"],
    "pipeline/paired_section.py": [
        "tests/pipeline/test_paired_section.py",
        "tests/pipeline/test_report_browser.py",
        "tests/pipeline/test_mutants_text.py",
    ],
    "pipeline/pretraining.py": [
        "tests/pipeline/test_pool_watch.py",
        "tests/pipeline/test_mutants_stages.py",
        "tests/pipeline/test_mutants_pool.py",
    ],
    "pipeline/profile_stage.py": ["tests/pipeline/test_mutants_stages.py"],
    "pipeline/quickstart.py": [
        "tests/crosscutting/fuzz/test_runs.py",
        "tests/cli/test_precision.py",
        "tests/pipeline/test_mutants_stages.py",
        "tests/pipeline/test_mutants_quickstart.py",
    ],
    "pipeline/readme.py": ["tests/crosscutting/fuzz/test_runs.py", "tests/pipeline/test_mutants_readme.py"],
    "pipeline/report.py": ["tests/pipeline/test_report_browser.py", "tests/pipeline/test_mutants_report.py"],
    "pipeline/settings.py": [
        "tests/crosscutting/fuzz/test_runs.py",
        "tests/cli/test_precision.py",
        "tests/pipeline/test_mutants_stages.py",
    ],
    "pipeline/stages.py": ["tests/cli/test_precision.py", "tests/pipeline/test_mutants_embed.py"],
    "pipeline/summary.py": [
        "tests/pipeline/test_paired_section.py",
        "tests/pipeline/test_report_browser.py",
        "tests/pipeline/test_mutants_report.py",
        "tests/pipeline/test_mutants_summary.py",
    ],
    # encode/: the embed and feature tests (seconds each)
    "encode/assemble.py": [
        "tests/encode/test_embed_outputs.py",
        "tests/encode/test_embed.py",
        "tests/encode/test_mutants.py",
        "tests/encode/test_mutants_assemble.py",
    ],
    "encode/budget.py": [
        "tests/crosscutting/fuzz/test_hostile.py",
        "tests/encode/test_embed.py",
        "tests/encode/test_mutants.py",
    ],
    "encode/chunks.py": [
        "tests/core/test_io.py",
        "tests/encode/test_embed_outputs.py",
        "tests/encode/test_embed.py",
        "tests/encode/test_mutants.py",
        "tests/encode/test_mutants_chunks.py",
    ],
    "encode/cp_measure.py": [
        "tests/features/test_cp_measure_kind.py",
        "tests/encode/test_mutants_shards.py",
        "tests/encode/test_mutants_cp_measure.py",
    ],
    "encode/formats.py": [
        "tests/encode/test_embed_outputs.py",
        "tests/core/test_io.py",
        "tests/encode/test_mutants_formats.py",
    ],
    "encode/handmade.py": [
        "tests/encode/test_handmade.py",
        "tests/encode/test_embed_outputs.py",
        "tests/encode/test_mutants.py",
    ],
    "encode/inputs.py": [
        "tests/encode/test_embed.py",
        "tests/crosscutting/fuzz/test_hostile.py",
        "tests/encode/test_mutants.py",
        "tests/encode/test_mutants_interface.py",
    ],
    "encode/shards.py": [
        "tests/encode/test_embed_outputs.py",
        "tests/data/test_shards.py",
        "tests/encode/test_mutants_shards.py",
        "tests/encode/test_mutants_shards2.py",
    ],
    "encode/options.py": [
        "tests/encode/test_options.py",
        "tests/encode/test_embed.py",
        "tests/encode/test_mutants.py",
    ],
    "encode/interface.py": [
        "tests/encode/test_mutants_interface.py",
        "tests/encode/test_options.py",
        "tests/encode/test_embed.py",
        "tests/encode/test_embed_outputs.py",
    ],
    "encode/embed.py": [
        "tests/encode/test_embed.py",
        "tests/encode/test_embed_outputs.py",
        "tests/encode/test_options.py",
        "tests/encode/test_mutants_embed.py",
    ],
    "encode/encoders.py": [
        "tests/encode/test_embed.py",
        "tests/encode/test_handmade.py",
        "tests/encode/test_embed_outputs.py",
        "tests/encode/test_options.py",
        "tests/encode/test_mutants_encoders.py",
    ],
    "encode/loop.py": [
        "tests/encode/test_mutants_loop.py",
        "tests/encode/test_embed.py",
        "tests/encode/test_embed_outputs.py",
    ],
    "encode/store.py": [
        "tests/encode/test_embed_outputs.py",
        "tests/encode/test_embed.py",
        "tests/encode/test_handmade.py",
        "tests/core/test_io.py",
        "tests/encode/test_mutants_formats.py",
    ],
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          37: "caught by type check", -11: "segfault", -9: "segfault", None: "not checked"}  # fmt: skip


_TQDM_LOCK = "\n\nimport threading as _threading  # noqa: E402\nimport tqdm as _tqdm  # noqa: E402\n\n_tqdm.tqdm.set_lock(_threading.RLock())\n"


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(module: str, fresh: bool) -> Path:
    """Scratch folder for ``module``: copies of src/ and tests/, pyproject.toml with [tool.mutmut]."""
    work = WORK / module.replace("/", "__").removesuffix(".py")
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests", "configs"):  # configs/: tests that load the provided YAML configs
        if (ROOT / name).exists() and not (work / name).exists():
            shutil.copytree(
                ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
    tests = [t for t in MODULES[module] if (ROOT / t.split("::")[0]).exists()]
    if not tests:  # an empty selection makes mutmut run the whole suite per mutant
        raise SystemExit(f"{module}: none of its test files exists yet: {', '.join(MODULES[module])}")
    section = f"""
[tool.mutmut]
source_paths = ["src"]
also_copy = ["configs"]
only_mutate = ["src/chada/{module}"]
pytest_add_cli_args_test_selection = {_toml_list(tests)}
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
use_git_change_detection = false
"""
    # tqdm's default lock holds a multiprocessing semaphore, shared by every process mutmut forks: a mutant
    # killed at its time limit while a progress bar held it left every later bar (so every later mutant
    # of a function that shows one) waiting forever, and they all counted as timeouts. A thread lock is
    # private to each process. Only the scratch copy of conftest.py gets this line.
    conftest = work / "tests" / "conftest.py"
    if conftest.exists() and _TQDM_LOCK not in conftest.read_text():
        conftest.write_text(conftest.read_text() + _TQDM_LOCK)
    text = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(text + section)
    return work


def summarise(work: Path, module: str) -> dict:
    meta = work / "mutants" / "src" / "chada" / f"{module}.meta"
    data = json.loads(meta.read_text())
    statuses = {k: STATUS.get(v, "suspicious") for k, v in data["exit_code_by_key"].items()}
    counts = Counter(statuses.values())
    total = len(statuses)
    killed = counts.get("killed", 0)
    return {
        "module": f"chada/{module}",
        "total": total,
        "killed": killed,
        "survived": counts.get("survived", 0),
        "timeout": counts.get("timeout", 0),
        "other": {k: v for k, v in counts.items() if k not in ("killed", "survived", "timeout")},
        "killed_pct": round(100.0 * killed / total, 1) if total else None,
        "survivors": sorted(k for k, s in statuses.items() if s != "killed"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("module", nargs="?", help="path under src/chada, e.g. models/layers.py")
    p.add_argument("--list", action="store_true", help="list the modules and their tests")
    p.add_argument("--max-children", type=int, default=2, help="parallel mutant workers (default 2)")
    p.add_argument("--resume", action="store_true", help="keep the scratch folder and mutmut's cache")
    p.add_argument("--survivors", action="store_true", help="show the diff of every surviving mutant")
    p.add_argument(
        "--table",
        action="store_true",
        help="markdown rows of every module's last summary.json (the columns of docs/testing.md)",
    )
    args = p.parse_args(argv)
    if args.table:
        for m in MODULES:
            f = WORK / m.replace("/", "__").removesuffix(".py") / "summary.json"
            if f.exists():
                s = json.loads(f.read_text())
                # the columns of docs/testing.md's tables; timeouts and other verdicts in their own cells
                no_tests = s["other"].get("no tests", 0)
                rest = ", ".join(f"{k} {v}" for k, v in s["other"].items() if k != "no tests")
                extra = f" (+{s['timeout']} timeout)" if s["timeout"] else ""
                print(
                    f"| `{m}` | {s['total']} | {s['killed']} | {s['survived']}{extra} | {no_tests} "
                    f"| {s['killed_pct']:.1f} % | {s['wall_s']} | `flock /tmp/chada-cpu.lock python "
                    f"scripts/mutation.py {m}` |" + (f" {rest} |" if rest else "")
                )
        return 0
    if args.list or not args.module:
        for m, tests in MODULES.items():
            print(f"{m:24s} {' '.join(tests)}")
        return 0
    if args.module not in MODULES:
        p.error(f"unknown module {args.module!r}; known: {', '.join(MODULES)}")
    mutmut = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
    if args.survivors:
        work = WORK / args.module.replace("/", "__").removesuffix(".py")
        summary = summarise(work, args.module)
        for name in summary["survivors"]:
            subprocess.run([mutmut, "show", name], cwd=work, check=False)
        return 0
    work = prepare(args.module, fresh=not args.resume)
    # one torch thread per worker: --max-children workers share the machine's cores
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    start = time.time()
    cmd = [mutmut, "run", "--max-children", str(args.max_children)]
    if sys.stdout.isatty():
        rc = subprocess.run(cmd, cwd=work, env=env).returncode
    else:  # mutmut's progress spinner is one long line: keep it out of logs
        print(f"running mutmut on {args.module} in {work} (progress: {work / 'mutmut.log'})", flush=True)
        with open(work / "mutmut.log", "w") as log:
            rc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    summary = summarise(work, args.module)
    summary["wall_s"] = round(time.time() - start)
    summary["mutmut_rc"] = rc
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    other = ", ".join(f"{k} {v}" for k, v in summary["other"].items()) or "-"
    print(
        f"\n{summary['module']}: {summary['total']} mutants, killed {summary['killed']}, survived "
        f"{summary['survived']}, timeout {summary['timeout']}, other {other}: {summary['killed_pct']} % killed "
        f"({summary['wall_s']} s)"
    )
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

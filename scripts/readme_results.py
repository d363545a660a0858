"""Regenerate the README's results section from one quickstart run folder.

    chada quickstart --out /tmp/qs            # a fresh, full run (about 15 minutes on 2 cores)
    python scripts/readme_results.py /tmp/qs README.md

Replaces the text between ``<!-- results:begin -->`` and ``<!-- results:end -->`` (nothing else) and
copies the run's pictures to docs/images/. The block says which machine the run was on and how long
it took, from the files the run wrote. Logic: :mod:`chada.pipeline.readme`.
"""

from __future__ import annotations

import argparse
import sys

from chada.errors import report
from chada.pipeline.readme import update_readme


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the quickstart output folder (chada quickstart --out RUN)")
    p.add_argument("readme", nargs="?", default="README.md", help="the README to update (default README.md)")
    p.add_argument("--images", default="docs/images", help="picture folder, relative to the README")
    p.add_argument("--no-images", action="store_true", help="leave the pictures alone")
    args = p.parse_args(argv)
    try:
        path = update_readme(args.run, args.readme, None if args.no_images else args.images)
    except Exception as exc:  # noqa: BLE001 - the CLI's one error policy (chada.errors)
        return report(exc, "readme_results")
    print(f"updated the results section of {path} from {args.run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

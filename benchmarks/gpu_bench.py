"""Put `turnscribe bench` results into README.md's bench block, beside the model card's RTX 3090 figures.

    turnscribe bench --json bench.json            # on the GPU machine (scripts/gpu_check.sh does it)
    python benchmarks/gpu_bench.py bench.json [bench-fast.json] [--update-readme]

Each JSON file becomes one table (plain and --fast runs side by side); the machine's GPU name is in its header.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from readme_block import publish

from turnscribe.bench import render

START_MARKER, END_MARKER = "<!-- bench:start -->", "<!-- bench:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="JSON files written by `turnscribe bench --json`")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the README's bench block")
    args = parser.parse_args()
    text = "\n\n".join(render(json.loads(path.read_text())) for path in args.results)
    publish(text, update_readme=args.update_readme, start_marker=START_MARKER, end_marker=END_MARKER)


if __name__ == "__main__":
    main()

"""Print a benchmark's table and, when asked, write it into README.md between its markers (placed by hand)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"


def publish(text: str, *, update_readme: bool, start_marker: str, end_marker: str) -> None:
    print()
    print(text)
    if not update_readme:
        return
    readme = README.read_text(encoding="utf-8")
    if start_marker not in readme or end_marker not in readme:
        print(f"README.md has no {start_marker} / {end_marker} markers; nothing written")
        return
    pattern = re.compile(re.escape(start_marker) + ".*?" + re.escape(end_marker), re.DOTALL)
    README.write_text(pattern.sub(lambda _: f"{start_marker}\n{text}\n{end_marker}", readme), encoding="utf-8")

"""Headless Chromium for tests: render a local HTML file with no network and read back the DOM."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("headless Chromium not found: install Debian's `chromium` (make test does)")


def dump_dom(html_file: Path, budget_ms: int = 10000) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                               "--dump-dom", html_file.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        raise AssertionError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(html_file: Path, out_png: Path, size: str = "1200,1600") -> Path:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                        f"--window-size={size}", f"--screenshot={out_png}", html_file.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120, check=True)
    return out_png


def images_ok(dom: str) -> tuple[int, int]:
    m = re.search(r'data-images-ok="(\d+)/(\d+)"', dom)
    if not m:
        raise AssertionError("the page's load handler never ran")
    return int(m.group(1)), int(m.group(2))

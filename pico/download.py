"""Resumable HTTP download with a progress bar and a recorded SHA-256.

Bytes go to `<dest>.part`; an interrupted download continues from there with a `Range` request. Only a
complete (and, when a checksum is given, verified) file is renamed to `dest`.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from pico.errors import DataError
from pico.io import progress_bar, sha256_file

CHUNK = 1 << 20


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part`. Raises OSError/URLError on a dropped connection."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pico-downloader"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part file is already whole
            return
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, progress_bar(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
            disable=not progress, leave=False,
        ) as bar:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")


def download(
    url: str,
    dest: str | Path,
    *,
    expected_sha256: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff_s: float = 1.0,
    progress: bool = True,
) -> str:
    """Download `url` to `dest` (resuming a previous `.part`); return the file's SHA-256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 429:
                raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
            last_error = e
        except (urllib.error.URLError, OSError) as e:  # dropped connection, timeout, refused
            last_error = e
        time.sleep(backoff_s * 2**attempt)
    else:
        raise DataError(
            f"download of {url} failed after {retries + 1} attempts ({last_error}); partial data kept in "
            f"{part}, run again to resume. Offline? Put the TinyStories .txt files in {dest.parent} yourself."
        )
    digest = sha256_file(part)
    if expected_sha256 and digest != expected_sha256.lower():
        part.unlink()
        raise DataError(f"{url}: SHA-256 {digest} does not match the expected {expected_sha256}; file discarded")
    os.replace(part, dest)
    return digest


def ensure_source(source: Path, url: str, files: dict[str, str], sha256: dict[str, str],
                  progress: bool = True) -> dict[str, str]:
    """Download `files` from `url` into `source` unless it already holds text; return {file: sha256} fetched.

    A source that is a file, or a folder with any .txt file, is used as it is (offline use: put or link the
    TinyStories .txt files there). The checksums of what was fetched go to `source/SHA256SUMS`.
    """
    if source.is_file():
        return {}
    sums = source / "SHA256SUMS"
    expected = {rel: source / rel for rel in files}
    # an earlier download that was cut off: some files (or .part files) there, no SHA256SUMS yet
    in_progress = source.is_dir() and not sums.exists() and (
        any(p.exists() for p in expected.values()) or any(source.rglob("*.part")))
    if source.is_dir() and any(source.rglob("*.txt")) and not in_progress:
        return {}
    if not files:
        raise DataError(f"{source}: no TinyStories text there and prepare.files is empty, so nothing to download")
    fetched: dict[str, str] = {}
    for rel, name in sorted(files.items()):
        dest = expected[rel]
        if dest.exists():  # finished before the interruption
            fetched[rel] = sha256_file(dest)
            if sha256.get(rel) and fetched[rel] != sha256[rel].lower():
                raise DataError(f"{dest}: SHA-256 {fetched[rel]} does not match the expected {sha256[rel]}")
            continue
        fetched[rel] = download(f"{url.rstrip('/')}/{name}", dest, expected_sha256=sha256.get(rel), progress=progress)
    from pico.io import write_text

    write_text(sums, "".join(f"{digest}  {rel}\n" for rel, digest in sorted(fetched.items())))
    return fetched

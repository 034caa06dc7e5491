"""Load check of `pico serve`: N concurrent clients for a bounded time against a local server.

    python benchmarks/serve_load.py [--checkpoint checkpoints/dpo.pt] [--clients 16] [--seconds 30]
                                    [--max-tokens 64] [--max-batch 8] [--max-queue 64] [--json PATH]

Starts `pico serve` in its own process on a free port, runs the clients (each sends a chat request with a
random spec, waits for the answer, sends the next; a 429 is waited out for its Retry-After), then reports
requests/s, p50/p99 latency of the answered requests, the server's peak RSS, the number of 429s (the queue bound
asked for them: lower --max-queue to see them) and every other failure. Exit status 1 if anything failed other
than a 429. Writes benchmarks/results/serve_load.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pico.cli", "serve", "--checkpoint", args.checkpoint, "--tokenizer", args.tokenizer,
           "--port", str(port), "--model-name", "bench", "--max-batch", str(args.max_batch),
           "--max-queue", str(args.max_queue)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pico serve exited: {proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("pico serve did not answer /health within 120 s")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import psutil  # not Linux: the current RSS, a lower bound of the peak

    return psutil.Process(pid).memory_info().rss / 2**20


def client_loop(port: int, deadline: float, max_tokens: int, seed: int, out: dict, lock: threading.Lock) -> None:
    from pico.spec import sample_specs

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    i = 0
    while time.monotonic() < deadline:
        spec = sample_specs(1, seed * 100_000 + i)[0]
        i += 1
        body = json.dumps({"model": "bench", "max_tokens": max_tokens, "temperature": 0.8, "seed": i,
                           "messages": [{"role": "user", "content": json.dumps(spec.to_dict())}]})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as e:
            status, data = f"connection: {type(e).__name__}", b""
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        elapsed = time.perf_counter() - t0
        with lock:
            if status == 200 and json.loads(data)["choices"][0]["message"]["content"] is not None:
                out["latencies"].append(elapsed)
            elif status == 429:
                out["rate_limited"] += 1
            else:
                out["failures"].append(f"{status}: {data[:200]!r}")
        if status == 429:
            time.sleep(min(float(response.headers.get("Retry-After", "1")), max(deadline - time.monotonic(), 0)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/dpo.pt")
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--json", help="write the report here instead of benchmarks/results/serve_load.json")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    port = free_port()
    server = start_server(args, port)
    out: dict = {"latencies": [], "rate_limited": 0, "failures": []}
    lock = threading.Lock()
    try:
        start = time.monotonic()
        deadline = start + args.seconds
        threads = [threading.Thread(target=client_loop, args=(port, deadline, args.max_tokens, c, out, lock))
                   for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start  # the last answers may end after the deadline: counted in the rate
        peak = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = sorted(out["latencies"])
    report = {
        "clients": args.clients, "seconds": round(elapsed, 2), "max_tokens": args.max_tokens,
        "max_batch": args.max_batch, "max_queue": args.max_queue,
        "ok": len(lat), "rate_limited": out["rate_limited"], "failed": len(out["failures"]),
        "failures": out["failures"][:5],
        "requests_per_s": round(len(lat) / elapsed, 3),
        "p50_s": round(statistics.median(lat), 4) if lat else None,
        "p99_s": round(lat[math.ceil(0.99 * len(lat)) - 1], 4) if lat else None,  # nearest rank
        "peak_rss_mb": round(peak, 1),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import save

        save("serve_load", report)
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

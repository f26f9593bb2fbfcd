#!/usr/bin/env python3
"""A bounded load test of `atp serve`: C concurrent clients x R requests each, on loopback, with the `openai` client.

Starts `atp serve` (the default model unless --model) on a free port, sends every client's requests in turn (a
question about one of the example images; every third a follow-up turn of the previous one), then prints a markdown
table: latency percentiles, time to first token, status counts (429s are counted, not retried; any 5xx is a
failure of the server), and the server's resident memory after a warm-up and after the run.

  python scripts/bench_serve.py --clients 8 --requests 25
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.bench.report import commit, machine  # noqa: E402

EXAMPLES = ROOT / "atp_cli" / "examples"
QUESTIONS = ("What colour is the triangle?", "How many shapes are there?", "Is there a circle?",
             "What is in the top left?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "atp_cli.cli", "serve", "--port", str(port), "--workers", str(args.workers),
           "--queue", str(args.queue), "--max-tokens", str(args.max_tokens)]
    if args.model:
        cmd += ["--model", str(args.model)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600  # the first start may assemble the default model
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"atp serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("atp serve did not start within 10 minutes")


def image_parts() -> list[dict]:
    parts = []
    for path in sorted(EXAMPLES.glob("*.png")):
        uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        parts.append({"type": "image_url", "image_url": {"url": uri}})
    return parts


def client_run(c: openai.OpenAI, model: str, index: int, n: int, images: list[dict], out: list[dict]) -> None:
    history: list[dict] = []
    for r in range(n):
        question = QUESTIONS[(index + r) % len(QUESTIONS)]
        if r % 3 == 2 and history:  # a follow-up turn of the previous conversation
            messages = [*history, {"role": "user", "content": question}]
        else:
            image = images[(index + r) % len(images)]
            messages = [{"role": "user", "content": [image, {"type": "text", "text": question}]}]
        t0 = time.perf_counter()
        try:
            res = c.chat.completions.with_raw_response.create(model=model, messages=messages)
            done = res.parse()
            seconds = time.perf_counter() - t0
            report = done.model_dump().get("atp", {})
            out.append({"status": res.status_code, "seconds": seconds, "ttft": report.get("first_token_seconds"),
                        "reused": report.get("prefill_reused")})
            history = [*messages, {"role": "assistant", "content": done.choices[0].message.content}]
        except openai.APIStatusError as e:
            out.append({"status": e.status_code, "seconds": time.perf_counter() - t0})
        except openai.APIConnectionError:
            out.append({"status": 0, "seconds": time.perf_counter() - t0})


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="Requests per client.")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--model", type=Path, help="Converted model folder (default: the default model).")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()

    port = free_port()
    proc = start_server(args, port)
    try:
        base = f"http://127.0.0.1:{port}"
        model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600)
        images = image_parts()
        warm: list[dict] = []
        client_run(c, model, 0, len(images) * 2, images, warm)  # every image encoded, every path run once
        server = psutil.Process(proc.pid)
        rss_before = server.memory_info().rss
        results: list[dict] = []
        samples: list[float] = []  # the server's RSS, sampled through the run (MiB)
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.5):
                samples.append(server.memory_info().rss / 2**20)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client_run, args=(c, model, i, args.requests, images, results))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        sampling.set()
        sampler.join()
        rss_after = server.memory_info().rss
        health = httpx.get(f"{base}/health").json()
    finally:
        proc.terminate()
        proc.wait(30)

    ok = [r for r in results if r["status"] == 200]
    by_status: dict[int, int] = {}
    for r in results:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    lat = [r["seconds"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    figures = {
        "clients": args.clients, "requests_per_client": args.requests, "workers": args.workers, "queue": args.queue,
        "max_tokens": args.max_tokens, "requests": len(results), "statuses": by_status,
        "server_errors": sum(n for s, n in by_status.items() if s >= 500 or s == 0),
        "wall_s": wall, "throughput_rps": len(ok) / wall if wall else 0.0,
        "latency_p50_s": percentile(lat, 0.5), "latency_p90_s": percentile(lat, 0.9),
        "latency_p99_s": percentile(lat, 0.99), "ttft_p50_s": statistics.median(ttft) if ttft else None,
        "continued_from_caches": sum(bool(r.get("reused")) for r in ok),
        "rss_before_mib": rss_before / 2**20, "rss_after_mib": rss_after / 2**20,
        "rss_first_half_max_mib": max(samples[:len(samples) // 2], default=0.0),
        "rss_second_half_max_mib": max(samples[len(samples) // 2:], default=0.0), "health": health,
        "machine": machine(), "commit": commit(), "cpu_count": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print("| clients x requests | workers / queue | statuses | 5xx | latency p50 / p90 / p99 (s) | time to first "
          "token p50 (s) | throughput (req/s) | follow-ups continued from the caches | server RSS after warm-up -> "
          "after (MiB) | RSS peak, first / second half of the run (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items()))
    print(f"| {args.clients} x {args.requests} | {args.workers} / {args.queue} | {statuses} | "
          f"{figures['server_errors']} | {figures['latency_p50_s']:.2f} / {figures['latency_p90_s']:.2f} / "
          f"{figures['latency_p99_s']:.2f} | {figures['ttft_p50_s'] or 0:.2f} | {figures['throughput_rps']:.2f} | "
          f"{figures['continued_from_caches']} | {figures['rss_before_mib']:.0f} -> {figures['rss_after_mib']:.0f} | "
          f"{figures['rss_first_half_max_mib']:.0f} / {figures['rss_second_half_max_mib']:.0f} |")
    if figures["server_errors"]:
        raise SystemExit(f"{figures['server_errors']} requests failed with a server error")


if __name__ == "__main__":
    main()

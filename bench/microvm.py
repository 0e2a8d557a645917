"""microVM benchmarks through the API (official SDK) against `wrenn serve --runtime microvm`.

Prints one JSON object per line: name, n, p50/p90 ms (or a value), and the accelerator the
server logged. Run by `bench/microvm.sh`, which starts the server; needs WRENN_BASE_URL,
WRENN_API_KEY and WRENN_DIR (the server's data dir, to read saved state sizes).

  microvm.create_to_first_exec   create of a busybox capsule to its first `true` (`Capsule()` then
                                 `commands.run`, which the server holds while the capsule starts):
                                 a copy-on-write clone of the template's warm image (made by a
                                 first, unmeasured create); with --cold (a server run with
                                 --no-warm-templates), a cold boot
                                 with --pooled (a server keeping one warm busybox capsule,
                                 `--warm busybox=1`), a pool hit: the create is handed a capsule
                                 cloned (and warmed up by one exec) ahead, and each create waits
                                 first until the pool has refilled
  microvm.create_to_first_exec_sdk_wait  the same with `Capsule(wait=True)`: the SDK polls the
                                 status every 0.5 s, so this is quantised by its poll interval
  microvm.warm_image_first_create the first create, which makes the warm image
  microvm.exec_true              one `true` round trip through the agent channel
  microvm.pause / .resume        a 512 MiB capsule that touched 256 MiB of memory (resume: `resume()`
                                 then `commands.run`; `.resume_sdk_wait`: `resume(wait=True)` first)
  microvm.pause_bytes            bytes written per pause (zstd -1)
  microvm.rss_running_idle_mb    QEMU resident memory of an idle 512 MiB capsule
  microvm.rss_paused_mb          host memory of a paused capsule (no QEMU runs)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from wrenn import Capsule


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def emit(name: str, xs: list[float] | None = None, value: float | None = None, **kw) -> None:
    row: dict = {"name": name, "accel": os.environ.get("ACCEL", "tcg")}
    if xs is not None:
        row |= {"n": len(xs), "p50_ms": round(statistics.median(xs), 1), "p90_ms": round(pct(xs, 90), 1)}
    if value is not None:
        row["value"] = value
    print(json.dumps(row | kw), flush=True)


def qemu_rss_mb(cid: str) -> float:
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and f"wrenn-{cid}".encode() in cmd:
            for line in (p / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="the server boots capsules cold: measure only that")
    ap.add_argument("--pooled", type=Path, metavar="LOG", help="the server pools busybox: measure pool hits (LOG: its log)")
    args = ap.parse_args()
    data = Path(os.environ["WRENN_DIR"])

    def create_to_first_exec(sdk_wait: bool = False) -> float:
        t = time.perf_counter()
        cap = Capsule(template="busybox", wait=sdk_wait)
        r = cap.commands.run("true")
        took = (time.perf_counter() - t) * 1e3
        assert r.exit_code == 0
        cap.destroy(wait=True)
        return took

    if args.pooled:

        def pooled(made: int) -> float:
            deadline = time.monotonic() + 300
            while args.pooled.read_text().count("warm capsule ready") <= made:
                assert time.monotonic() < deadline, "the pool did not refill"
                time.sleep(0.1)
            t = time.perf_counter()
            cap = Capsule(template="busybox")
            r = cap.commands.run("true")
            took = (time.perf_counter() - t) * 1e3
            assert r.exit_code == 0
            assert (cap.info.metadata or {}).get("warm_pool") == "true", cap.info.metadata
            cap.destroy(wait=True)
            return took

        emit("microvm.create_to_first_exec", [pooled(i) for i in range(args.n)], pool_hit=True)
        return
    if args.cold:
        emit("microvm.create_to_first_exec", [create_to_first_exec() for _ in range(args.n)], cold_boot=True)
        return
    emit("microvm.warm_image_first_create", value=round(create_to_first_exec(), 1))
    emit("microvm.create_to_first_exec", [create_to_first_exec() for _ in range(args.n)], warm_clone=True)
    emit("microvm.create_to_first_exec_sdk_wait", [create_to_first_exec(True) for _ in range(args.n)], warm_clone=True)

    cap = Capsule(template="busybox", memory_mb=512, wait=True)
    try:
        execs = []
        for _ in range(args.n * 4):
            t = time.perf_counter()
            cap.commands.run("true")
            execs.append((time.perf_counter() - t) * 1e3)
        emit("microvm.exec_true", execs)
        time.sleep(2)
        emit("microvm.rss_running_idle_mb", value=round(qemu_rss_mb(cap.capsule_id), 1), memory_mb=512)
        # Touch 256 MiB so the saved state has something to carry.
        cap.commands.run("sh -c 'mkdir -p /dev/shm/b && dd if=/dev/urandom of=/dev/shm/b/x bs=1M count=256 2>/dev/null'", timeout=300)
        pauses, resumes, resumes_wait, sizes = [], [], [], []
        for _ in range(args.n):
            t = time.perf_counter()
            cap.pause(wait=True)
            pauses.append((time.perf_counter() - t) * 1e3)
            state = data / "microvm" / "capsules" / cap.capsule_id / "state"
            sizes.append(state.stat().st_size)
            rss_paused = qemu_rss_mb(cap.capsule_id)
            t = time.perf_counter()
            cap.resume()
            cap.commands.run("true")
            resumes.append((time.perf_counter() - t) * 1e3)
            cap.pause(wait=True)
            t = time.perf_counter()
            cap.resume(wait=True)
            cap.commands.run("true")
            resumes_wait.append((time.perf_counter() - t) * 1e3)
        emit("microvm.pause", pauses, memory_mb=512, touched_mb=256)
        emit("microvm.resume", resumes, memory_mb=512, touched_mb=256, to_first_exec=True)
        emit("microvm.resume_sdk_wait", resumes_wait, memory_mb=512, touched_mb=256, to_first_exec=True)
        emit("microvm.pause_bytes", value=int(statistics.median(sizes)), compression="zstd -1")
        emit("microvm.rss_paused_mb", value=rss_paused)
    finally:
        cap.destroy(wait=True)


if __name__ == "__main__":
    main()

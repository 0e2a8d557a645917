"""Prints benchmark JSON lines of two runs side by side (p50 and p99, ms), matched by `bench`
and `mode`: `python3 bench/compare.py A.jsonl B.jsonl` (columns named by each file's `client`
field, else by the file name). Used by bench/run.sh (Rust client vs Python) and to put
before/after runs of a change next to each other."""

import json
import sys


def load(path):
    rows, name = {}, None
    with open(path) as f:
        for ln in f:
            ln = ln.strip()
            if not ln.startswith("{"):
                continue
            d = json.loads(ln)
            name = name or d.get("client")
            key = d["bench"] + (f" ({d['mode']})" if d.get("mode") else "")
            rows[key] = d
    return rows, name or path


def cell(d, k):
    if d is None:
        return "-"
    if d["bench"] == "api.stream_mib_per_s" and k == "p50_ms":
        return f"up {d['upload_mib_per_s']} / down {d['download_mib_per_s']} MiB/s"
    return f"{d[k]:.2f}"


def main():
    (a, an), (b, bn) = load(sys.argv[1]), load(sys.argv[2])
    keys = list(a) + [k for k in b if k not in a]
    head = ["bench", f"{an} p50", f"{bn} p50", f"{an} p99", f"{bn} p99"]
    table = [head] + [[k, cell(a.get(k), "p50_ms"), cell(b.get(k), "p50_ms"),
                       cell(a.get(k), "p99_ms"), cell(b.get(k), "p99_ms")] for k in keys]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()

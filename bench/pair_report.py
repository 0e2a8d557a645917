"""Report of bench/pair.sh: `python3 bench/pair_report.py DIR ROUNDS`.

Prints, per round, every benchmark's p50 and p99 of build A and build B side by side with
B/A, then the p50 of each create step of both builds, read from the runtime's `capsule created`
debug lines and the server's `capsule started` and `capsule create answered` ones (`server.*`:
its answer to the create, the wait for a start turn, the runtime's create and the move to
`running`; logged by builds that have them). `launcher rest` is the launch less the launcher's
own steps: its exec and start-up (unless it was started ahead) and the exchange with it."""

import json
import re
import statistics
import sys
from pathlib import Path

TOP = {"total_ms", "prep_ms", "net", "root", "bundle_ms", "launch_ms", "launcher", "ready_ms",
       "services_ms"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load(path, suffix=""):
    rows = {}
    if not path.exists():
        return rows
    for ln in path.read_text().splitlines():
        if ln.startswith("{"):
            d = json.loads(ln)
            key = d["bench"] + (f" ({d['mode']})" if d.get("mode") else "") + suffix
            rows[key] = d
    return rows


def steps(path):
    """Step name → list of ms over the `capsule created` lines of a log."""
    out = {}
    if not path.exists():
        return out
    for ln in path.read_text().splitlines():
        ln = ANSI.sub("", ln)
        server = next((w for w in ("capsule started", "capsule create answered") if w in ln), None)
        if server:
            for tok in ln.split():
                k, _, v = tok.partition("=")
                if k.endswith("_ms"):
                    out.setdefault(f"server.{k}", []).append(float(v))
            continue
        if "capsule created" not in ln:
            continue
        group, one = None, {}
        for tok in ln.split():
            parts = tok.split("=")
            if len(parts) == 3 and parts[0] in TOP:
                group, name, val = parts
            elif len(parts) == 2 and parts[0] in TOP:
                group, name, val = None, parts[0], parts[1]
            elif len(parts) == 2 and group:
                name, val = parts
            else:
                continue
            try:
                one[f"{group}.{name}" if group else name] = float(val)
            except ValueError:
                pass
        if "launch_ms" in one:
            own = sum(v for k, v in one.items() if k.startswith("launcher."))
            one["launcher rest"] = one["launch_ms"] - own
        for k, v in one.items():
            out.setdefault(k, []).append(v)
    return out


def fmt(x):
    return "-" if x is None else f"{x:.2f}"


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print()


def main():
    d, rounds = Path(sys.argv[1]), int(sys.argv[2])
    for r in range(1, rounds + 1):
        a, b = {}, {}
        for kind, suffix in (("rt", ""), ("rust", ""), ("py", " [python]")):
            a.update(load(d / f"A.{r}.{kind}.jsonl", suffix))
            b.update(load(d / f"B.{r}.{kind}.jsonl", suffix))
        rows = [["bench", "A p50", "B p50", "B/A", "A p99", "B p99"]]
        for k in list(a) + [k for k in b if k not in a]:
            x, y = a.get(k, {}), b.get(k, {})
            p50a, p50b = x.get("p50_ms"), y.get("p50_ms")
            ratio = f"{p50b / p50a:.2f}" if p50a and p50b else "-"
            rows.append([k, fmt(p50a), fmt(p50b), ratio, fmt(x.get("p99_ms")),
                         fmt(y.get("p99_ms"))])
        print(f"round {r}: p50/p99 ms")
        table(rows)
        for kind in ("rt", "api"):
            sa, sb = steps(d / f"A.{r}.{kind}.log"), steps(d / f"B.{r}.{kind}.log")
            if not sa and not sb:
                continue
            rows = [["step (p50 ms)", "A", "B", "n A", "n B"]]
            for k in list(sa) + [k for k in sb if k not in sa]:
                va, vb = sa.get(k), sb.get(k)
                rows.append([k, fmt(va and statistics.median(va)),
                             fmt(vb and statistics.median(vb)), str(len(va or [])),
                             str(len(vb or []))])
            print(f"round {r}: create steps ({'wrenn bench' if kind == 'rt' else 'server'})")
            table(rows)


if __name__ == "__main__":
    main()

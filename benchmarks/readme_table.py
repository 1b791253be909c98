"""The README's benchmark table, regenerated from the newest *quiet* results JSON of each
row (`machine_load.quiet`), never typed by hand:

    python -m benchmarks.readme_table [--results benchmarks/results] [--write README.md]

Without --write it prints the table; with it, it replaces the block between
`<!-- bench-table:start -->` and `<!-- bench-table:end -->` in that file. A row whose
bench has no quiet result yet says so instead of showing a loaded-machine number.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
SPEEDUP = "speedup"
ROWS = (("sft", "demo"), ("sft", "bench_tiny"), ("rollout", "demo"), ("grpo", "bench_tiny"), ("rewards", "demo"))


def newest_quiet(results_dir: str, bench: str, config: str) -> tuple[str, dict] | None:
    """(file name, record) of the newest quiet run of `bench` on `config`, or None."""
    found = []
    for path in glob.glob(os.path.join(results_dir, f"*-{bench}-{config}-*.json")):
        with open(path) as f:
            rec = json.load(f)
        load = rec.get("machine_load")
        if rec.get("bench") == bench and rec.get("config_name") == config and isinstance(load, dict) \
                and load.get("quiet"):
            found.append((rec.get("created_utc", ""), os.path.basename(path), rec))
    return max(found)[1:] if found else None


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f} ms"


def row(bench: str, config: str, rec: dict) -> str:
    r, sh = rec["results"], rec.get("shapes", {})
    shown = [o for o in rec.get("overrides") or [] if not o.startswith("bench.")]
    if shown:  # a run with overrides says which
        config = config + "` with `" + " ".join(shown)
    if bench == "sft":
        o, t = r["ours"], r["torch"]
        shape = f"batch {sh['batch']} × {sh['seq_len']} tokens, {sh['patches']} slide tokens"
        return (f"| SFT step, `{config}` ({shape}) | {_ms(o['median_s'])}, {o['tokens_per_s']:.0f} tok/s | "
                f"{_ms(t['median_s'])}, {t['tokens_per_s']:.0f} tok/s | {t['median_s'] / o['median_s']:.2f}× |")
    if bench == "rollout":
        o, t = r["ours"], r["torch"]
        shape = f"{sh['batch']} prompts × G {sh['group_size']} × {sh['new_tokens']} new tokens, shared prefix"
        return (f"| rollout, `{config}` ({shape}) | {o['tokens_per_s']:.0f} tok/s | {t['tokens_per_s']:.0f} tok/s "
                f"(HF `generate`) | {o['tokens_per_s'] / t['tokens_per_s']:.2f}× |")
    if bench == "grpo":
        o, t = r["ours"], r["torch"]
        med = lambda side, k: side[k]["median_s"]  # noqa: E731
        ours = (f"{med(o, 'step'):.2f} s (rollout {med(o, 'rollout'):.2f}, ref log-probs {med(o, 'ref_logprobs'):.2f}, "
                f"update {med(o, 'update'):.2f})")
        ref = (f"{med(t, 'step'):.2f} s ({med(t, 'rollout'):.2f} / {med(t, 'ref_logprobs'):.2f} / {med(t, 'update'):.2f}"
               f", + old log-probs {med(t, 'old_logprobs'):.2f})")
        return f"| GRPO step, `{config}` | {ours} | {ref} | {med(t, 'step') / med(o, 'step'):.2f}× |"
    if bench == "rewards":
        rs = r
        sizes = " / ".join(str(x["batch"]) for x in rs)
        return (f"| rewards, `{config}`, batch {sizes} | {' / '.join(_ms(x['device_s']) for x in rs)} | "
                f"{' / '.join(_ms(x['python_s']) for x in rs)} (Python loop) | "
                f"{' / '.join(f'{x[SPEEDUP]:.1f}×' for x in rs)} |")
    raise ValueError(f"no README row for bench {bench!r}")


def table(results_dir: str) -> str:
    lines = ["| bench | ours | PyTorch baseline | speed-up (baseline time / ours; < 1: we are slower) |",
             "|---|---|---|---|"]
    sources = []
    for bench, config in ROWS:
        got = newest_quiet(results_dir, bench, config)
        if got is None:
            lines.append(f"| {bench}, `{config}` | no quiet result yet | | |")
            continue
        name, rec = got
        lines.append(row(bench, config, rec))
        sources.append(f"`{name}`")
    return "\n".join(lines) + "\n\nFrom " + ", ".join(sources) + " (`python -m benchmarks.readme_table`)."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--write", default="", help="file whose bench-table block to replace (e.g. README.md)")
    a = ap.parse_args(argv)
    text = table(a.results)
    if not a.write:
        print(text)
        return 0
    with open(a.write) as f:
        doc = f.read()
    if START not in doc or END not in doc:
        raise SystemExit(f"{a.write}: no {START} … {END} block")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = a.write + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{head}{START}\n{text}\n{END}{tail}")
    os.replace(tmp, a.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

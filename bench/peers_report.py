"""The peer benchmark's tables: medians and ratios, memory, and the issue's targets."""

from __future__ import annotations

from bench.common import table
from bench.peers_measure import Outcome, Sizes

POP3MAIL = "pop3mail flow+task"
ENGINE = "pop3mail engine alone"
POPLIB, GETMAIL, FETCHMAIL = "poplib loop", "getmail6", "fetchmail"


def _find(outcomes: list[Outcome], key: str, tool: str) -> Outcome | None:
    return next((o for o in outcomes if o.key == key and o.tool.startswith(tool)
                 and not o.skipped and not o.failed), None)


def time_rows(outcomes: list[Outcome]) -> list[dict]:
    rows = []
    for o in outcomes:
        ours = _find(outcomes, o.key, POP3MAIL) if o.key in "abc" else None
        if o.skipped or o.failed:
            rows.append({"workload": o.workload, "tool": o.tool,
                         "median s": "skipped" if o.skipped else "FAILED",
                         "runs s": (o.skipped or o.failed)[:120]})
            continue
        rows.append({
            "workload": o.workload, "tool": o.tool, "median s": f"{o.median:.3f}",
            "runs s": " ".join(f"{t:.2f}" for t in o.times)
            + (f" (+{o.discarded} discarded)" if o.discarded else ""),
            "tool / pop3mail": f"{o.median / ours.median:.2f}x" if ours else "",
            "peak RSS MB": f"{o.peak_rss_kb / 1024:.0f}" if o.peak_rss_kb else "",
        })
    return rows


#: The flow's time against the poplib loop: (a) as issue #14 set it, (b) as the first
#: performance issue did (#14 has no target for big messages).
POPLIB_BOUND = {"a": 2.0, "b": 1.2}


def _faster_than_peers(outcomes: list[Outcome], key: str) -> list[dict]:
    ours = _find(outcomes, key, POP3MAIL)
    if ours is None:
        return []
    rows = []
    for peer in (GETMAIL, FETCHMAIL):
        other = _find(outcomes, key, peer)
        if other:
            rows.append(_target(f"({key}) faster than {peer}",
                                f"{peer} takes {other.median / ours.median:.2f}x pop3mail's time",
                                ours.median < other.median))
    poplib = _find(outcomes, key, POPLIB)
    if poplib:
        ratio, bound = ours.median / poplib.median, POPLIB_BOUND[key]
        rows.append(_target(f"({key}) within {bound:g}x of the poplib loop",
                            f"pop3mail takes {ratio:.2f}x poplib's time", ratio <= bound))
    return rows


def _target(name: str, measured: str, holds: bool) -> dict:
    return {"target": name, "measured": measured, "holds": "yes" if holds else "NO"}


def target_rows(outcomes: list[Outcome], rss: list[dict]) -> list[dict]:
    rows = _faster_than_peers(outcomes, "a") + _faster_than_peers(outcomes, "b")
    ours = _find(outcomes, "c", POP3MAIL)
    for peer in (POPLIB, GETMAIL, FETCHMAIL):
        other = _find(outcomes, "c", peer)
        if ours and other:
            ratio = other.median / ours.median
            rows.append(_target(f"(c) 10x faster than {peer}",
                                f"{peer} takes {ratio:.1f}x pop3mail's time", ratio >= 10))
    engine = next((r for r in rss if r["tool"].startswith("pop3mail")), None)
    if engine:
        growth_mb = engine["growth_kb"] / 1024
        rows.append(_target("(d) peak RSS growth under 100 MB", f"{growth_mb:.1f} MB",
                            growth_mb < 100))
    one, many = _find(outcomes, "e", "receive_all_mail"), _find(outcomes, "e", "receive_from")
    if any(o.key == "e" and o.failed for o in outcomes):
        rows.append(_target("(e) many mailboxes under 3x one", "a run failed", False))
    elif one and many:
        ratio = many.median / one.median
        rows.append(_target("(e) many mailboxes under 3x one", f"{ratio:.2f}x", ratio < 3))
    flow, direct = _find(outcomes, "f", POP3MAIL), _find(outcomes, "f", ENGINE)
    if flow and direct:
        overhead = flow.median - direct.median
        rows.append(_target("(f) Prefect overhead under 0.5 s per mailbox",
                            f"{overhead:.3f} s", overhead < 0.5))
    return rows


def print_report(outcomes: list[Outcome], rss: list[dict], sizes: Sizes, before: dict,
                 after: dict) -> None:
    print("\n" + table(time_rows(outcomes),
                       ["workload", "tool", "median s", "tool / pop3mail", "runs s",
                        "peak RSS MB"]))
    if rss:
        print("\n" + table(rss, ["tool", "seconds", "baseline MB", "peak MB", "growth MB",
                                 "growth / message"]))
    print("\n" + table(target_rows(outcomes, rss), ["target", "measured", "holds"]))
    print(f"\n{'full sizes' if sizes.is_full() else 'REDUCED sizes'}: {sizes}")
    for name, value in before.items():
        print(f"{name}: {value}" if name != "load average"
              else f"load average: {value} at the start, {after[name]} at the end")

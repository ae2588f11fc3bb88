"""`ragtune eval`: upload eval sets, run evaluations with a progress bar and the result table,
show one, and draw its pass rates with their 95% intervals (an SVG file), through a running
server's API."""

from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path
from typing import Annotated

import typer

from service.policy_cli import Key, Url, _check, _client

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate each path on your own questions.")
sets_app = typer.Typer(no_args_is_help=True, help="Eval sets: items with checks.")
eval_app.add_typer(sets_app, name="sets")


def _auth(key: str | None) -> dict[str, str]:
    if not key:
        typer.echo("no tenant key: pass --key or set RAGTUNE_API_KEY", err=True)
        raise typer.Exit(2)
    return {"Authorization": f"Bearer {key}"}


@sets_app.command("upload")
def upload_set(
    file: Annotated[Path, typer.Argument(help="JSONL: one item a line (query/messages, checks).")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name.")] = None,
    grammar: Annotated[
        Path | None, typer.Option(help="A Lark grammar file, for `grammar` checks.")
    ] = None,
    key: Key = None,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """Upload an eval set; prints its id."""
    auth = _auth(key)
    try:
        data = file.read_bytes()
        grammar_text = grammar.read_text() if grammar is not None else None
    except OSError as exc:
        typer.echo(f"cannot read: {exc}", err=True)
        raise typer.Exit(2) from None
    fields = {"name": name or file.stem}
    if grammar_text is not None:
        fields["grammar"] = grammar_text
    out = _check(_client(url).post(
        "/v1/eval-sets", headers=auth, files={"file": (file.name, data)}, data=fields
    ))
    typer.echo(f"{out['id']}  {out['name']}  {out['items']} items")


@sets_app.command("list")
def list_sets(key: Key = None, url: Url = "http://127.0.0.1:8000") -> None:
    """The tenant's eval sets."""
    for s in _check(_client(url).get("/v1/eval-sets", headers=_auth(key)))["data"]:
        typer.echo(f"{s['id']}  {s['name']}  {s['items']} items")


def table(ev: dict) -> str:
    """The result as text: per arm, then the paired comparisons, then the recommendation."""
    lines = [f"evaluation {ev['id']}: {ev['state']} ({ev['progress']['done']}/"
             f"{ev['progress']['total']})"]
    if ev.get("error"):
        lines.append(f"error: {ev['error']}")
    arms = ev.get("arms") or []
    if arms:
        width = max(len(a["arm"]) for a in arms) + 2
        lines.append(f"{'arm':<{width}}{'passed':>9} {'rate':>6} {'95% CI':>13} "
                     f"{'hit rate':>9} {'p50 ms':>8} {'p95 ms':>8} {'tokens':>8}")
        for a in arms:
            lo, hi = a["ci95"]
            hit = "-" if a["retrieval_hit_rate"] is None else f"{a['retrieval_hit_rate']:.0%}"
            tokens = a["tokens"]["prompt"] + a["tokens"]["completion"]
            lines.append(
                f"{a['arm']:<{width}}{a['passed']:>5}/{a['total']:<3} {a['pass_rate']:>6.0%} "
                f"{f'{lo:.0%}-{hi:.0%}':>13} {hit:>9} {a['latency_ms']['p50']:>8.0f} "
                f"{a['latency_ms']['p95']:>8.0f} {tokens:>8}"
            )
    for c in ev.get("comparisons") or []:
        verdict = {"a_better": f"{c['a']} better", "b_better": f"{c['b']} better",
                   "no_difference": "no detectable difference"}[c["verdict"]]
        lines.append(f"  {c['a']} vs {c['b']}: {c['diff']:+.0%}, p={c['p_value']:.3g} "
                     f"-> {verdict}")
    rec = ev.get("recommendation")
    if rec:
        lines.append(f"recommended: {rec['arm']} ({rec['reason']})")
    return "\n".join(lines)


def chart_svg(ev: dict) -> str:
    """Pass rate per arm as a bar with its 95% interval as a whisker; a standalone SVG."""
    arms = ev.get("arms") or []
    bar, gap, left, top, height = 48, 36, 56, 30, 220
    width = left + len(arms) * (bar + gap) + gap
    y = lambda rate: top + height * (1 - rate)  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 80}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13">pass rate, 95% CI: {escape(ev["id"])}</text>',
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        out.append(f'<line x1="{left - 4}" x2="{width}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                   f"{tick:.0%}</text>")
    recommended = (ev.get("recommendation") or {}).get("arm")
    for i, a in enumerate(arms):
        x = left + gap + i * (bar + gap)
        colour = "#2b7a4b" if a["arm"] == recommended else "#4a6fa5"
        out.append(f'<rect x="{x}" y="{y(a["pass_rate"]):.1f}" width="{bar}" '
                   f'height="{height * a["pass_rate"]:.1f}" fill="{colour}"/>')
        lo, hi = a["ci95"]
        mid = x + bar / 2
        out.append(f'<line x1="{mid}" x2="{mid}" y1="{y(hi):.1f}" y2="{y(lo):.1f}" '
                   'stroke="#111" stroke-width="1.5"/>')
        for v in (lo, hi):
            out.append(f'<line x1="{mid - 8}" x2="{mid + 8}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                       'stroke="#111" stroke-width="1.5"/>')
        out.append(f'<text x="{mid}" y="{top + height + 16}" text-anchor="middle">'
                   f"{escape(a['arm'])}</text>")
        out.append(f'<text x="{mid}" y="{top + height + 30}" text-anchor="middle">'
                   f"{a['passed']}/{a['total']}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _finish(ev: dict, as_json: bool, chart: Path | None) -> None:
    typer.echo(json.dumps(ev, indent=2) if as_json else table(ev))
    if chart is not None and ev.get("arms"):
        chart.write_text(chart_svg(ev))
        typer.echo(f"chart: {chart}")


AsJson = Annotated[bool, typer.Option("--json", help="Print the evaluation as JSON.")]
Chart = Annotated[Path | None, typer.Option(help="Write the pass-rate chart here (SVG).")]


@eval_app.command("run")
def run(
    eval_set: Annotated[str, typer.Option("--set", help="The eval set's id.")],
    arms: Annotated[
        str, typer.Option(help="Comma-separated: prompt, rag, auto, adapter_rag:NAME[@VERSION].")
    ] = "prompt,rag",
    max_tokens: Annotated[int, typer.Option(help="Per answer.")] = 256,
    wait: Annotated[bool, typer.Option(help="Follow it to the end with a progress bar.")] = True,
    chart: Chart = None,
    as_json: AsJson = False,
    key: Key = None,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """Run an evaluation: every item on every arm, greedy, through the chat path."""
    auth = _auth(key)
    client = _client(url)
    body = {"eval_set": eval_set, "max_tokens": max_tokens,
            "arms": [a.strip() for a in arms.split(",") if a.strip()]}
    queued = _check(client.post("/v1/evaluations", headers=auth, json=body))
    if not wait:
        typer.echo(queued["id"])
        return
    ev = _check(client.get(f"/v1/evaluations/{queued['id']}", headers=auth))
    with typer.progressbar(length=ev["progress"]["total"], label=queued["id"],
                           file=None) as bar:
        shown = 0
        while ev["state"] in ("queued", "running"):
            time.sleep(0.5)
            ev = _check(client.get(f"/v1/evaluations/{queued['id']}", headers=auth))
            bar.update(ev["progress"]["done"] - shown)
            shown = ev["progress"]["done"]
    _finish(ev, as_json, chart)
    if ev["state"] != "succeeded":
        raise typer.Exit(1)


@eval_app.command("show")
def show(
    evaluation_id: Annotated[str, typer.Argument(help="The evaluation's id.")],
    chart: Chart = None,
    as_json: AsJson = False,
    items: Annotated[
        Path | None, typer.Option(help="Also save its per-item results (JSONL) here.")
    ] = None,
    key: Key = None,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """An evaluation's figures (and its items, with --items)."""
    auth = _auth(key)
    client = _client(url)
    ev = _check(client.get(f"/v1/evaluations/{evaluation_id}", headers=auth))
    if items is not None:
        resp = client.get(f"/v1/evaluations/{evaluation_id}/items", headers=auth)
        if not resp.is_success:
            _check(resp)
        items.write_text(resp.text)
    _finish(ev, as_json, chart)

"""The one page design every study kind's report uses.

:func:`page` lays a report out the same way for every kind: a header with the study name
and kind, the verdict first, then the kind's sections (tables, plots), the notes, and the
run facts (data, runtime, wall time, steps ran and reused). :func:`table` wraps every table
in a box that scrolls sideways on its own, with sticky headers and right-aligned,
tabular numbers. :func:`write_page` writes atomically.
"""
from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

from compresslab.report.svg import COLORS

CSS = """
*{box-sizing:border-box}
body{font:14px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2328;margin:0;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:16px 28px 40px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #e4e4e4;padding-bottom:3px}
p,li{max-width:1000px}code{font-size:90%;background:#f3f3f3;padding:0 3px;border-radius:3px}
p,li,h1,h2{overflow-wrap:anywhere}
.kind{display:inline-block;font-size:12px;color:#555;border:1px solid #ccc;border-radius:10px;padding:0 8px;
margin-left:6px;vertical-align:middle}
.verdict{border-left:5px solid #1f5fbf;background:#f1f6fd;padding:8px 14px;margin:12px 0}
.verdict ul{margin:4px 0;padding-left:18px}.verdict li{margin:2px 0}
.failed{border-left:5px solid #d73027;background:#fdf0ef;padding:6px 14px;margin:12px 0}
.scroll{overflow:auto;width:fit-content;max-width:100%;max-height:75vh;margin:8px 0 14px;border:1px solid #ddd}
table{border-collapse:separate;border-spacing:0;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid #e6e6e6;border-right:1px solid #f0f0f0;text-align:left;vertical-align:top;white-space:nowrap}
th{position:sticky;top:0;z-index:1;background:#f3f4f6;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td small{color:#666}
tr:hover td{background:#f7f9fc}
.plots{display:flex;flex-wrap:wrap;gap:12px 20px;margin:10px 0}
.plots svg{max-width:100%;height:auto}
img{max-width:100%;height:auto}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:13px;margin:6px 0}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.sig{color:#1a7f37}.ns{color:#57606a}
.facts{color:#444;font-size:13px;margin-top:30px;border-top:1px solid #e4e4e4}
.facts dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}.facts dt{font-weight:600}.facts dd{margin:0}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""

_NUMERIC = re.compile(r"^[-+−]?(\d|\.\d)")


def esc(s) -> str:
    return html.escape(str(s))


def _text(cell: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()


def table(head: list[str], rows: list[list], *, caption: str = "") -> str:
    """A table in its own scroll box. Cells are HTML strings (escape text yourself) or numbers;
    a column whose cells all read as numbers (or ``–``) is right-aligned in tabular figures."""
    rows = [[c if isinstance(c, str) else f"{c:g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    num = [bool(rows) and all(_NUMERIC.match(_text(r[j])) or _text(r[j]) in ("–", "") for r in rows)
           and any(_NUMERIC.match(_text(r[j])) for r in rows) for j in range(len(head))]
    cls = [' class="num"' if n else "" for n in num]
    th = "".join(f"<th{c}>{h}</th>" for h, c in zip(head, cls))
    body = "".join("<tr>" + "".join(f"<td{c}>{x}</td>" for x, c in zip(r, cls)) + "</tr>" for r in rows)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f'<div class="scroll"><table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def bullets(items, cls: str = "") -> str:
    """``<ul>`` of escaped items, or nothing at all when there are none."""
    items = [i for i in items if i]
    if not items:
        return ""
    c = f' class="{cls}"' if cls else ""
    return f"<ul{c}>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def plots(*svgs: str | None) -> str:
    """Side-by-side plots (they wrap below each other on narrow screens)."""
    inner = "".join(s for s in svgs if s)
    return f'<div class="plots">{inner}</div>' if inner else ""


def legend(items: list[tuple[str, str]]) -> str:
    """An HTML colour legend: ``(color, meaning)`` pairs."""
    return '<div class="legend">' + "".join(
        f'<span><span class="swatch" style="background:{c}"></span>{esc(t)}</span>' for c, t in items) + "</div>"


#: What the colours of models mean in the plots that judge them against a retrain band.
BAND_LEGEND = [(COLORS["parent"], "parent / reference"),
               (COLORS["close"], "child as close as an independent retrain, or closer"),
               (COLORS["far"], "child farther than an independent retrain"),
               (COLORS["control"], "control (independent retrain, student from scratch)")]


def closeness(value: float | None, band: dict | None, lower_is_closer: bool = True) -> str:
    """``close`` when ``value`` is inside the independent-retrain ``band`` ({min, max}) or
    beyond it on the close side, ``far`` when beyond it on the far side, ``child`` when
    there is no band (or no value) to judge by."""
    if value is None or not band:
        return "child"
    edge = band["max"] if lower_is_closer else band["min"]
    return "close" if (value <= edge if lower_is_closer else value >= edge) else "far"


def failed_section(results: dict) -> str:
    failed = results.get("failed") or {}
    if not failed:
        return ""
    rows = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in failed.items())
    return (f'<div class="failed"><h2>Incomplete: {len(failed)} step(s) failed</h2><ul>{rows}</ul><p>Every other '
            "step finished. The tables below leave the failed models out; fix the cause and run the study again "
            "(finished steps are reused).</p></div>")


def run_facts(results: dict) -> str:
    """Data, runtime, wall time and the steps ran / reused, as a definition list."""
    facts = []
    d = results.get("data")
    if isinstance(d, dict):
        sizes = ", ".join(f"{k} {v:,}" for k, v in (d.get("sizes") or {}).items())
        shape = f", input {tuple(d['input_shape'])}" if d.get("input_shape") else ""
        classes = f", {d['num_classes']} classes" if d.get("num_classes") else ""
        facts.append(("data", f"<code>{esc(d.get('name', '?'))}</code>: {sizes} examples{classes}{shape}"))
    elif d:
        facts.append(("data", f"<code>{esc(d)}</code>"))
    if results.get("split"):
        facts.append(("split", esc(results["split"])))
    rt = results.get("runtime") or {}
    if rt:
        dev = rt.get("cuda") or rt.get("name") or ""
        facts.append(("runtime", esc(f"{rt.get('device', '?')} ({dev}), torch {rt.get('torch', '?')}, "
                                     f"{rt.get('num_threads', results.get('num_threads', '?'))} threads"
                                     + (", deterministic" if rt.get("deterministic") else ""))))
    elif results.get("num_threads"):
        facts.append(("runtime", f"{results['num_threads']} threads"))
    if "seconds" in results:
        facts.append(("wall time", f"{results['seconds']:.1f} s"))
    steps = results.get("steps") or {}
    if steps:
        facts.append(("steps", f"{len(steps.get('ran', []))} ran, {len(steps.get('reused', []))} reused from the "
                               "run store"))
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return f'<footer class="facts"><h2>Run facts</h2><dl>{body}</dl></footer>'


def page(results: dict, title: str, verdict: list[str], sections: list[str], notes: list[str] = (),
         intro: str = "") -> str:
    """The whole report: header (study name, kind), the verdict first, a short ``intro``,
    then ``sections`` (HTML), the notes (only if any) and the run facts."""
    study = results.get("study", "?")
    kind = results.get("kind", "study")
    v = bullets(verdict)
    verdict_html = f'<section class="verdict"><b>Verdict</b>{v}</section>' if v else ""
    note_html = bullets(notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>compresslab: {esc(study)}</title><style>{CSS}</style></head><body><main>
<header><h1>{title}</h1><div>Study <code>{esc(study)}</code><span class="kind">{esc(kind)}</span></div></header>
{verdict_html}
{failed_section(results)}
{intro}
{''.join(sections)}
{'<h2>Notes</h2>' + note_html if note_html else ''}
{run_facts(results)}
</main></body></html>
"""


def as_stored(results: dict) -> dict:
    """``results`` as ``results.json`` stores them (numpy scalars as numbers, keys in the
    order the kind wrote them), so the report a study writes and the one ``compresslab
    report`` rebuilds are the same page."""
    def default(o):
        if hasattr(o, "item"):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.loads(json.dumps(results, default=default))


def write_page(path: str | Path, page: str) -> Path:
    """Write ``page`` to ``path`` atomically (a temporary sibling, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path

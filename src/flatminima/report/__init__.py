"""Reports: one self-contained HTML page per study (figures embedded) and an index.

A page shows the paper and the claim, the measured tables and figures, the published values beside
the measured ones, the verdict, the exact command and config, seeds and software versions. Pages have
no external resources (images are data URIs, CSS is inline), so they open anywhere and can be mailed.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..store import Store
from ..studies.registry import software_versions

__all__ = ["render_study", "render_all", "markdown_to_html", "software_versions", "claims_table", "update_readme"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top} th{background:#f3f3f3} td{font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em} code{background:#f6f8fa;padding:0 .2em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.verdict{background:#fffbe6;border-left:4px solid #e6b800;padding:.6em 1em}
.muted{color:#666;font-size:.9em} a{color:#0550ae}
"""


_MD = MarkdownIt("commonmark", {"html": False}).enable("table")  # raw HTML in the text is escaped


def _inline(text: str) -> str:
    """One line of Markdown (code spans, emphasis) as inline HTML."""
    return _MD.renderInline(text)


def markdown_to_html(md: str) -> str:
    """Markdown (CommonMark with pipe tables, as the studies' summaries write it) as HTML."""
    return _MD.render(md)


def _image(path: Path) -> str:
    mime = {"png": "image/png", "svg": "image/svg+xml", "jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(
        path.suffix.lower().lstrip("."))
    if mime is None:
        raise ConfigError(f"figure {path} is not a PNG, SVG or JPEG file")
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(path.stem)}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


def _values_table(measured: dict[str, Any], published: dict[str, Any]) -> str:
    keys = list(dict.fromkeys([*published, *measured]))
    if not keys:
        return ""

    def fmt(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(json.dumps(v) if not isinstance(v, str) else v)

    if not published:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{fmt(measured.get(k))}</td></tr>" for k in keys)
        return f"<table><thead><tr><th>quantity</th><th>measured</th></tr></thead><tbody>{rows}</tbody></table>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{fmt(published.get(k))}</td><td>{fmt(measured.get(k))}</td></tr>"
                   for k in keys)
    return f"<table><thead><tr><th>quantity</th><th>published</th><th>measured</th></tr></thead><tbody>{rows}</tbody></table>"


def render_study(folder: str | Path, out: str | Path | None = None) -> Path:
    """Render ``folder/summary.json`` (written by :func:`flatminima.studies.run_study`) to an HTML page."""
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"no study summary in {folder}; run the study first (flatminima study run NAME)")
    s = json.loads(summary_path.read_text())
    scale = s.get("scale", "default")
    cmd = f"flatminima study run {s['study']}" + ("" if scale == "default" else f" --scale {scale}")
    cmd += "".join(f" --set {k}={v}" for k, v in (s.get("overrides") or {}).items())
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(s['study'])} — flatminima</title>",
        f"<style>{CSS}</style></head><body>",
        "<p class='muted'><a href='index.html'>all studies</a></p>",
        f"<h1>{html.escape(s['study'])} <span class='muted'>({html.escape(scale)} scale)</span></h1>",
        f"<p><strong>Paper:</strong> {_inline(s.get('paper', ''))}</p>",
        f"<p><strong>Claim tested:</strong> {_inline(s.get('claim', ''))}</p>",
    ]
    crit, decision = s.get("criterion"), s.get("decision")
    if crit:
        parts += [f"<p><strong>Published:</strong> {_inline(crit['published'])}</p>",
                  f"<p><strong>Pass criterion (fixed before the run):</strong> {_inline(crit['rule'])}</p>"]
    if decision:
        items = "".join(f"<li>{html.escape(p['name'])}: <strong>{html.escape(p['outcome'])}</strong>, "
                        f"{_inline(p['reason'])}</li>" for p in decision.get("parts", []))
        parts.append(f"<div class='verdict'><strong>Verdict: {html.escape(decision['outcome'])}</strong><ul>{items}</ul>"
                     f"<p>{_inline(s.get('verdict', ''))}</p></div>")
    else:
        parts.append(f"<div class='verdict'><strong>Verdict, as measured:</strong> {_inline(s.get('verdict', ''))}</div>")
    measured, published = s.get("measured") or {}, s.get("published") or {}
    both = [k for k in published if k in measured]
    if both:  # the paper's values beside ours, for the quantities both report
        parts += ["<h2>Published and measured</h2>",
                  _values_table({k: measured[k] for k in both}, {k: published[k] for k in both})]
    only_published = {k: v for k, v in published.items() if k not in measured}
    if only_published:
        parts += ["<h2>Published values</h2><p class='muted'>Compare with the measured tables below.</p>",
                  _values_table(only_published, {}).replace("<th>measured</th>", "<th>published</th>")]
    rest = {k: v for k, v in measured.items() if k not in published}
    if rest:
        parts += ["<details><summary>All measured values</summary>", _values_table(rest, {}), "</details>"]
    for name, table in (s.get("tables") or {}).items():
        parts += [f"<h2>{html.escape(name)}</h2>", markdown_to_html(table)]
    figures = s.get("figures") or []
    if figures:
        parts.append("<h2>Figures</h2>")
        for f in figures:
            p = folder / f
            if not p.is_file():
                raise ConfigError(f"figure {f} listed in {summary_path} is missing")
            parts.append(_image(p))
    if s.get("notes"):
        parts += ["<h2>Notes</h2>", markdown_to_html(s["notes"])]
    parts += [
        "<h2>Reproduce</h2>", f"<pre>{html.escape(cmd)}</pre>",
        f"<p class='muted'>{s.get('n_points', '?')} grid points; finished {html.escape(str(s.get('finished', '')))}."
        " Re-running the command reuses finished points from the run store.</p>",
        "<h2>Configuration</h2>", f"<pre>{html.escape(json.dumps(s.get('config', {}), indent=2))}</pre>",
        "<h2>Software</h2>", f"<pre>{html.escape(json.dumps(s.get('software') or software_versions(), indent=2))}</pre>",
        "</body></html>",
    ]
    out = Path(out) if out is not None else folder / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out


def render_all(store: Store | None = None, out_dir: str | Path | None = None) -> Path:
    """Render every study that has a summary in the store, and an index page. Returns the index path."""
    from ..studies.registry import list_studies, study_folder

    store = store or Store()
    out_dir = Path(out_dir) if out_dir is not None else store.root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for study in list_studies():
        base = store.root / "studies" / study.name
        done = sorted(p.parent for p in base.glob("*/summary.json")) if base.exists() else []
        if not done:
            rows.append((study, None, None))
            continue
        for folder in done:
            scale = folder.name
            page = render_study(folder, out_dir / f"{study.name}--{scale}.html")
            rows.append((study, scale, page))
    items = []
    for study, scale, page in rows:
        if page is None:
            items.append(f"<tr><td>{html.escape(study.name)}</td><td>—</td><td>{_inline(study.claim)}</td><td class='muted'>not run yet: <code>flatminima study run {html.escape(study.name)}</code></td></tr>")
        else:
            rec = json.loads((study_folder(store, study.name, scale) / "summary.json").read_text())
            verdict = rec.get("verdict", "")
            if rec.get("decision"):
                verdict = f"**{rec['decision']['outcome']}**. {verdict}"
            items.append(f"<tr><td><a href='{page.name}'>{html.escape(study.name)}</a></td><td>{html.escape(scale)}</td>"
                         f"<td>{_inline(study.claim)}</td><td>{_inline(verdict)}</td></tr>")
    index = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>flatminima studies</title>",
        f"<style>{CSS}</style></head><body><h1>flatminima studies</h1>",
        f"<p class='muted'>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from the run store {html.escape(str(store.root))}.</p>",
        "<table><thead><tr><th>study</th><th>scale</th><th>claim</th><th>verdict, as measured</th></tr></thead><tbody>",
        *items, "</tbody></table></body></html>",
    ]
    path = out_dir / "index.html"
    atomic_write_text(path, "\n".join(index))
    return path


# ---- the README's claims table, generated from the studies' recorded summaries -----------------------------

README_BEGIN = "<!-- claims-table: generated by `flatminima report --readme` from results/*.json; do not edit -->"
README_END = "<!-- /claims-table -->"


def _cell(text: Any) -> str:
    """Text for one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def builtin_studies() -> list:
    """The studies that ship with flatminima (not a user's, registered through FLATMINIMA_STUDY_MODULES)."""
    from ..studies.registry import list_studies

    return [s for s in list_studies() if s.run_point.__module__.startswith("flatminima.studies.")]


def claims_table(records: dict[str, dict[str, Any]], studies: list | None = None) -> str:
    """The Markdown claims table: one row per study, from its recorded default-scale summary.

    ``records``: study name -> the study's ``summary.json`` (as :func:`flatminima.studies.run_study` writes
    it). ``studies``: the rows (default: :func:`builtin_studies`). A study without a record, or whose record
    has no computed decision (it ran before its claim became code), says so instead of numbers. Every
    number in the table comes from the records.
    """
    rows = ["| study | claim | published | pass criterion (fixed before the run) | measured | verdict | wall time |",
            "|---|---|---|---|---|---|---|"]
    for study in builtin_studies() if studies is None else studies:
        rec = records.get(study.name)
        crit = study.criterion
        published = crit.published if crit else "—"
        rule = crit.rule if crit else "—"
        name = f"`{study.name}`"
        if rec is None or not rec.get("decision"):
            why = "not run at default scale since its claim became code" if crit else "no criterion yet"
            rows.append(f"| {name} | {_cell(study.claim)} | {_cell(published)} | {_cell(rule)} | {why} | — | — |")
            continue
        decision = rec["decision"]
        measured = "; ".join(f"{p['name']}: {p['reason']}" for p in decision.get("parts", []))
        wall = rec.get("wall_seconds")
        wall_txt = "—"
        if isinstance(wall, (int, float)):
            n_w = rec.get("workers", 1)
            wall_txt = f"{wall / 60:.1f} min, {n_w} worker{'s' if n_w != 1 else ''}"
            if rec.get("points_reused"):
                wall_txt += f" (resumed: {rec['points_reused']} of {rec.get('n_points', '?')} points from an earlier run)"
        rows.append(f"| {name} | {_cell(rec.get('claim', study.claim))} | {_cell(published)} | {_cell(rule)} | "
                    f"{_cell(measured)} | **{decision['outcome']}** | {wall_txt} |")
    return "\n".join(rows)


def read_records(results: str | Path) -> dict[str, dict[str, Any]]:
    """The recorded summaries in ``results/`` (one ``<study>.json`` each), by study name."""
    results = Path(results)
    out = {}
    for path in sorted(results.glob("*.json")) if results.is_dir() else []:
        rec = json.loads(path.read_text())
        out[rec["study"]] = rec
    return out


def readme_with_table(readme_text: str, table: str) -> str:
    """``readme_text`` with the block between the claims-table markers replaced by ``table``."""
    start, end = readme_text.find(README_BEGIN), readme_text.find(README_END)
    if start < 0 or end < start:
        raise ConfigError(f"the README has no claims-table block: add the lines {README_BEGIN!r} and {README_END!r}")
    return readme_text[: start + len(README_BEGIN)] + "\n" + table + "\n" + readme_text[end:]


def update_readme(readme: str | Path, store: Store | None = None, results: str | Path | None = None,
                  studies: list | None = None) -> Path:
    """Record the store's default-scale study summaries in ``results/`` and regenerate the README's table.

    For every registered study whose default scale has run in ``store`` (with a computed decision), its
    ``summary.json`` is copied to ``results/<study>.json`` (``results`` defaults to the folder ``results``
    beside the README); records of studies the store has not run are kept. Then the block between the
    claims-table markers of ``readme`` is rewritten from ``results/``. ``studies``: which (default:
    :func:`builtin_studies`). Returns the README path.
    """
    from ..studies.registry import study_folder

    studies = builtin_studies() if studies is None else studies
    readme = Path(readme)
    if not readme.is_file():
        raise ConfigError(f"no README at {readme}")
    text = readme.read_text()
    readme_with_table(text, "")  # the markers are checked before anything is written
    results = Path(results) if results is not None else readme.parent / "results"
    if store is not None:
        for study in studies:
            summary = study_folder(store, study.name, "default") / "summary.json"
            if summary.is_file() and json.loads(summary.read_text()).get("decision"):
                results.mkdir(parents=True, exist_ok=True)
                atomic_write_text(results / f"{study.name}.json", summary.read_text())
    atomic_write_text(readme, readme_with_table(text, claims_table(read_records(results), studies)))
    return readme

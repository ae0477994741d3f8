"""The report as one static HTML page (``index.html``): no server, no script, no CDN, CSS
inline, every image a PNG file next to it referenced by a relative name.

Sections: the title (run name and data set), the data-savings statement, the strategy x
fraction table, the accuracy-vs-fraction plot, the training curves, the tests against random
and the agreement with forgetting (when there are any), per strategy its kept/dropped
gallery, and failed or missing trials.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { margin-top: 1.8em; font-size: 1.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; } tr.full td { font-weight: 600; }
ul.savings li { margin: 0.3em 0; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: 0.92em; } .problem { color: #a00; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], full_label: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cls = ' class="full"' if full_label and row[0] == full_label else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(src: str, alt: str, caption: str = "") -> str:
    note = f'<p class="note">{html.escape(caption)}</p>' if caption else ""
    return f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">{note}</figure>'


def page(*, title: str, subtitle: str, intro: str, savings: Sequence[str],
         table: tuple[Sequence[str], Sequence[Sequence[str]]], full_label: str,
         plots: Mapping[str, tuple[str, str]],
         extra_tables: Sequence[tuple[str, str, tuple[Sequence[str], Sequence[Sequence[str]]]]],
         galleries: Mapping[str, tuple[str, str]], problems: Sequence[str]) -> str:
    """The page as a string. ``plots`` and ``galleries``: heading -> (PNG name, caption);
    ``extra_tables``: (heading, note, (headers, rows))."""
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="sub">{html.escape(subtitle)}</p>',
             "<h2>Data savings</h2>", f"<p>{html.escape(intro)}</p>",
             '<ul class="savings">' + "".join(f"<li>{html.escape(s)}</li>" for s in savings)
             + "</ul>", "<h2>Results</h2>", _table(*table, full_label=full_label)]
    for heading, (src, caption) in plots.items():
        parts += [f"<h2>{html.escape(heading)}</h2>", _figure(src, heading, caption)]
    for heading, note, (headers, rows) in extra_tables:
        parts += [f"<h2>{html.escape(heading)}</h2>", f'<p class="note">{html.escape(note)}</p>',
                  _table(headers, rows)]
    if galleries:
        parts.append("<h2>What each strategy keeps and drops</h2>")
        for heading, (src, caption) in galleries.items():
            parts += [f"<h3>{html.escape(heading)}</h3>", _figure(src, heading, caption)]
    if problems:
        parts += ["<h2>Failed or missing trials</h2>",
                  "<ul>" + "".join(f'<li class="problem">{html.escape(p)}</li>'
                                   for p in problems) + "</ul>"]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="note">Written by sas-ray on {when}.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")

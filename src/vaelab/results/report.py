"""vaelab-compare's ``report.html``: one self-contained page (no network, no CDN: images inline
as base64, a small inline script) with

- the runs table, the same rows as ``runs.csv`` under readable labels (β, z, model, seed),
  sortable by any column and filterable by text; ``report.html#sort=test/elbo:desc&filter=beta_vae``
  opens it sorted and filtered;
- a gallery of each run's final image panels (samples, reconstructions, traversals), rows by β
  and columns by latent size, with switches for which panels to show;
- the errors of failed runs, under the table;
- the plots (rate-distortion, metrics against latent size, curves).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from vaelab.errors import printable
from vaelab.results.tables import cell

# the final picture of these panels goes into the gallery, when the run made it
GALLERY_PANELS = ("samples", "class_samples", "reconstructions", "traversals")
# shown before the user changes the switches
GALLERY_SHOWN = ("samples", "class_samples", "traversals")

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.note{color:#555;max-width:60em} .scroll{overflow-x:auto;max-width:100%}
#filter{width:28em;padding:4px 6px;margin:.6em 0}
table.runs{border-collapse:collapse;font-size:13px}
.runs th,.runs td{border:1px solid #ccc;padding:3px 6px;white-space:nowrap}
.runs td.num{text-align:right;font-variant-numeric:tabular-nums}
.runs th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0}
.runs th[data-dir=asc]::after{content:" \\25B2"} .runs th[data-dir=desc]::after{content:" \\25BC"}
.runs tr.failed td{background:#fde8e8}
.runs td.folder{color:#777;font-size:11px}
.gallery{border-collapse:collapse}
.gallery th{padding:4px 8px;background:#f3f3f3;font-weight:600}
.gallery td{vertical-align:top;padding:6px;border:1px solid #e3e3e3}
figure{margin:0 0 6px 0} figcaption{font-size:12px;color:#444}
.gallery img{display:block;width:260px;image-rendering:pixelated}
.hide-samples .p-samples,.hide-class_samples .p-class_samples,.hide-reconstructions .p-reconstructions,
.hide-traversals .p-traversals{display:none}
.plots img{max-width:100%}
pre.error{background:#fdf3f3;border:1px solid #e8c4c4;padding:6px;white-space:pre-wrap;font-size:12px}
"""

SCRIPT = """
(function () {
  const table = document.getElementById("runs");
  const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells);
  const filterBox = document.getElementById("filter");
  const shown = document.getElementById("shown");
  function key(row, column) {
    const td = row.cells[column];
    const number = td.dataset.value === undefined ? NaN : parseFloat(td.dataset.value);
    return isNaN(number) ? td.textContent.trim().toLowerCase() : number;
  }
  function sortBy(column, dir) {
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = key(a, column), y = key(b, column);
      const xEmpty = x === "" || x === "nan", yEmpty = y === "" || y === "nan";
      if (xEmpty || yEmpty) return xEmpty - yEmpty;  // empty cells last, either way
      if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * dir;
      return (typeof x === "number" ? -1 : 1) * dir;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    heads.forEach(function (th, i) {
      if (i === column) th.dataset.dir = dir > 0 ? "asc" : "desc"; else delete th.dataset.dir;
    });
  }
  function applyFilter(text) {
    const words = text.toLowerCase().split(/\\s+/).filter(Boolean);
    let count = 0;
    Array.from(body.rows).forEach(function (row) {
      const hay = row.textContent.toLowerCase();
      const keep = words.every(function (w) { return hay.indexOf(w) >= 0; });
      row.hidden = !keep;
      count += keep;
    });
    shown.textContent = count + " of " + body.rows.length + " runs shown";
  }
  function remember() {
    const th = heads.find(function (h) { return h.dataset.dir; });
    const parts = [];
    if (th) parts.push("sort=" + encodeURIComponent(th.dataset.column) + ":" + th.dataset.dir);
    if (filterBox.value) parts.push("filter=" + encodeURIComponent(filterBox.value));
    history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
  }
  heads.forEach(function (th, i) {
    th.addEventListener("click", function () {
      sortBy(i, th.dataset.dir === "asc" ? -1 : 1);
      remember();
    });
  });
  filterBox.addEventListener("input", function () { applyFilter(filterBox.value); remember(); });
  const wanted = new URLSearchParams(location.hash.slice(1));
  if (wanted.get("filter")) filterBox.value = wanted.get("filter");
  applyFilter(filterBox.value);
  if (wanted.get("sort")) {
    const at = wanted.get("sort").lastIndexOf(":");
    const name = at < 0 ? wanted.get("sort") : wanted.get("sort").slice(0, at);
    const column = heads.findIndex(function (h) { return h.dataset.column === name; });
    if (column >= 0) sortBy(column, wanted.get("sort").slice(at + 1) === "desc" ? -1 : 1);
  }
  const gallery = document.getElementById("gallery");
  document.querySelectorAll("input.panel-switch").forEach(function (box) {
    const apply = function () { gallery.classList.toggle("hide-" + box.value, !box.checked); };
    box.addEventListener("change", apply);
    apply();
  });
  window.addEventListener("load", function () {  // for a reader (and a test) to know that every picture decoded
    const images = Array.from(document.images);
    document.body.dataset.imagesTotal = images.length;
    const loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
    document.body.dataset.imagesLoaded = loaded.length;
  });
})();
"""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 20 << 20  # a panel is about 100 KB; a plot about 150 KB


def png_bytes(path: Path, root: Path) -> bytes | None:
    """The PNG file at ``path`` if it is a regular file inside ``root`` of at most MAX_PNG_BYTES
    that starts with the PNG signature; else None, with a warning naming it (a symlink to a
    private file, a FIFO or a renamed text file is never embedded)."""
    import sys

    from vaelab.errors import UserError
    from vaelab.safe_load import read_file

    try:
        data = read_file(path, root, MAX_PNG_BYTES)
    except UserError as error:
        print(f"warning: not embedding {printable(str(error))}", file=sys.stderr)
        return None
    if not data.startswith(PNG_SIGNATURE):
        print(f"warning: not embedding {printable(str(path))}: it is not a PNG file", file=sys.stderr)
        return None
    return data


def script_hash(script: str) -> str:
    import hashlib

    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


# nothing but the page's own script runs, nothing is fetched: a crafted name that got past the
# escaping still could not run code or send data anywhere
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{script_hash(SCRIPT)}'; "
    "base-uri 'none'; form-action 'none'"
)


def inline_png(path: Path, alt: str, root: Path, **attributes: str) -> str:
    """An <img> holding the PNG file itself (base64), so that the page needs no other file;
    "" when the file is not a PNG inside ``root`` (``png_bytes``)."""
    data = png_bytes(path, root)
    if data is None:
        return ""
    extra = "".join(f' {name.replace("_", "-")}="{html.escape(value)}"' for name, value in attributes.items())
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"{extra}>'


def final_panel(folder: Path, panel: str) -> Path | None:
    """The run's last picture of this panel (``images/<panel>/epoch=NNN.png``), None without one."""
    pictures = sorted((folder / "images" / panel).glob("epoch=[0-9]*.png"))
    return pictures[-1] if pictures else None


def table_html(runs, rows: list[dict]) -> str:
    """The runs table: ``rows`` (runs.csv's, in its order) under a label column; numbers keep their
    full value in data-value for sorting, and show as in runs.md."""
    columns = list(rows[0])
    head = '<th data-column="label">run</th>' + "".join(
        f'<th data-column="{html.escape(c)}">{html.escape("folder" if c == "run" else c)}</th>' for c in columns
    )
    lines = []
    for run, row in zip(runs, rows, strict=True):
        cells = [f"<td>{html.escape(run.label)}</td>"]
        for column in columns:
            value = row[column]
            if column == "run":
                cells.append(
                    f'<td class="folder" title="{html.escape(str(value))}">{html.escape(Path(value).name)}</td>'
                )
            elif isinstance(value, int | float) and not isinstance(value, bool):
                number = "" if isinstance(value, float) and math.isnan(value) else repr(value)
                cells.append(f'<td class="num" data-value="{number}">{html.escape(cell(value))}</td>')
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        css = ' class="failed"' if run.status == "failed" else ""
        lines.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (
        f'<table class="runs" id="runs"><thead><tr>{head}</tr></thead><tbody>\n'
        + "\n".join(lines)
        + "\n</tbody></table>"
    )


def gallery_html(runs) -> str:
    """Rows by β, columns by latent size; in each cell, every run of that (β, z) (models, seeds)
    with its final panels. Panels a run did not make are left out."""
    pictures = {run.folder: {p: final_panel(run.folder, p) for p in GALLERY_PANELS} for run in runs}
    with_images = [run for run in runs if any(pictures[run.folder].values())]
    if not with_images:
        return (
            "<p>No run has saved image panels: <code>callbacks.image_panels</code> makes them every "
            "<code>every_n_epochs</code> validations, or was off.</p>"
        )
    betas = sorted({run.beta for run in with_images})
    latents = sorted({run.latent_dim for run in with_images})
    panels = [p for p in GALLERY_PANELS if any(pictures[run.folder][p] for run in with_images)]
    switches = " ".join(
        f'<label><input type="checkbox" class="panel-switch" value="{p}"{" checked" if p in GALLERY_SHOWN else ""}> '
        f"{p.replace('_', ' ')}</label>"
        for p in panels
    )
    head = "<tr><th></th>" + "".join(f"<th>z = {z}</th>" for z in latents) + "</tr>"
    body = []
    for beta in betas:
        cells = [f"<th>β = {beta:g}</th>"]
        for latent_dim in latents:
            group = sorted(
                (r for r in with_images if r.beta == beta and r.latent_dim == latent_dim),
                key=lambda r: (r.model, r.data, r.seed),
            )
            figures = []
            for run in group:
                shown = []
                for panel, path in pictures[run.folder].items():
                    if path is not None:
                        caption = f"{panel.replace('_', ' ')}, {path.stem.replace('=', ' ')}"
                        alt = f"{run.label}: {caption}"
                        image = inline_png(path, alt, run.folder, data_run=run.folder.name, data_panel=panel)
                        figure = f'<figure class="p-{panel}">{image}<figcaption>{html.escape(caption)}</figcaption>'
                        if image:
                            shown.append(f"{figure}</figure>")
                figures.append(f"<div><strong>{html.escape(run.label)}</strong>{''.join(shown)}</div>")
            cells.append(f"<td>{''.join(figures)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<p>Show: {switches}</p>\n<table class="gallery" id="gallery">{head}\n' + "\n".join(body) + "\n</table>"


def failures_html(runs) -> str:
    failed = [run for run in runs if run.status == "failed"]
    if not failed:
        return ""
    items = "\n".join(
        f"<h3>{html.escape(run.label)} <small>({html.escape(run.folder.name)})</small></h3>"
        f'<pre class="error">{html.escape(run.error or "no error was recorded")}</pre>'
        for run in failed
    )
    return f"<h2>Failed runs ({len(failed)})</h2>\n{items}"


def write_report(
    runs, rows: list[dict], plots: list[Path], out: Path, sources: list[str], root: Path | None = None
) -> Path:
    """Write ``<out>/report.html`` for these runs (``rows``: runs.csv's rows, one per run, same
    order) and plots (PNG files); return its path."""
    plots_html = "\n".join(
        f"<h3>{html.escape(p.stem.replace('_', ' '))}</h3>{inline_png(p, p.stem.replace('_', ' '), out)}" for p in plots
    )
    failed = sum(run.status == "failed" for run in runs)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}"><title>vaelab: {len(runs)} runs</title>
<style>{STYLE}</style></head>
<body><h1>vaelab: {len(runs)} runs{f", {failed} failed" if failed else ""}</h1>
<p class="note">From {html.escape(", ".join(sources))}. Metrics are in nats per image (summed over pixels or latent
dimensions, averaged over images); elbo is the plain ELBO (β = 1); test/ metrics are on the best checkpoint.
Click a column to sort; type to filter (every word must match).</p>
<input id="filter" type="search" placeholder="filter, e.g. beta_vae z=10"> <span id="shown"></span>
<div class="scroll">{table_html(runs, rows)}</div>
{failures_html(runs)}
<h2>Gallery: the last image panels of each run</h2>
{gallery_html(runs)}
<h2>Plots</h2>
<div class="plots">{plots_html}</div>
<script>{SCRIPT}</script>
</body></html>
"""
    from vaelab.runs import write_file

    return write_file(out / "report.html", page, root=root)

"""report.html: the Markdown report as one self-contained web page (figures embedded, CSS inline).

The page is rendered from the very Markdown text written to report.md, so every section, table and note of the
Markdown report (including ones added later) appears in the HTML with no work here. Figures the Markdown
references as ``![caption](name.png)`` are embedded where they are referenced; the other figures written beside
the report go to a closing "Figures" section, each with the caption of :data:`FIGURE_CAPTIONS`.

Self-contained means the page loads nothing: images are ``data:`` URIs, an image the Markdown references but
that was not written (e.g. ``--no-plots``) becomes a note instead of a broken link, raw HTML in the Markdown
(a label or error message holding ``<img src=...>``) is escaped as text, and a Content-Security-Policy forbids
any other load, so a mistake shows as a missing image rather than a silent network request."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as etree
from collections.abc import Mapping

import markdown
from markdown.treeprocessors import Treeprocessor

# What each figure of analysis.plots draws (keep in step with plots.py: these are the figures' legends in words).
FIGURE_CAPTIONS: dict[str, str] = {
    "rd_curves.png": (
        "Rate-distortion curves, one row per study; rate in bits per pixel on a log axis. "
        "Left, PSNR vs rate: each line is a configuration's mean over seeds at each λ, error bars ±1 std over "
        "seeds (the legend title gives n; no bars when n = 1); the baseline is the thick black line with "
        "squares, its λ written at its points; every trial's own point is a small faint dot, a collapsed trial a "
        "cross in its configuration's colour. The reference codecs (JPEG, WebP and AVIF where Pillow has it), "
        "run on the same evaluation images, are the grey dashed and dotted lines; the grey dotted horizontal "
        "line, when shown, is the PSNR of a flat colour per image. "
        "Middle, ΔPSNR against the baseline (at equal rate unless the panel title says equal λ): per λ, the "
        "mean of the per-seed paired differences, error bars their 95 % t-interval (n − 1 degrees of "
        "freedom); the black line at 0 is the baseline, and the note in the panel says whether any interval "
        "excludes 0. Right, when MS-SSIM is reported: MS-SSIM (dB) vs rate, drawn as the PSNR panel but without "
        "reference codecs. With many configurations, the best by BD-rate are in colour and the others are thin "
        "grey lines without error bars."),
    "weights.png": (
        "Task weights z_i over epochs, one row per study and one panel per task: each line is a "
        "configuration's mean over its trials (all λ and seeds together), the baseline thick black; the bands "
        "are ±1 std over those trials, drawn only when a study has at most 5 configurations (the legend title "
        "says which and gives n per epoch). The standard objective has no task weights."),
    "gammas.png": (
        "γ of each scale (γ_s1, γ_s2, γ_s3) over epochs: the base γ times the schedule's multiplier. Same "
        "drawing as the task weights: each configuration's mean over its trials (all λ and seeds), bands ±1 "
        "std over them when at most 5 configurations, baseline thick black."),
}

# No network, no script: images only as data: URIs, styles only inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1b1b1b;
       background: #fff; margin: 0; }
main { max-width: 1500px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.7rem; border-bottom: 2px solid #333; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; margin-top: 2.5rem; border-bottom: 1px solid #bbb; padding-bottom: .2rem; }
h3 { font-size: 1.1rem; margin-top: 1.8rem; }
code { font: .88em/1.3 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #f3f3f3;
       padding: .05em .3em; border-radius: 3px; overflow-wrap: anywhere; }
nav.toc { background: #f7f7f7; border: 1px solid #ddd; padding: .4rem 1rem; font-size: .9rem; display: inline-block; }
nav.toc ul { margin: .2rem 0; padding-left: 1.2rem; }
.table-wrap { overflow-x: auto; margin: .8rem 0 1.2rem; }
table { border-collapse: collapse; font-size: .85rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.5rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .88rem; color: #333; margin-top: .4rem; max-width: 75rem; }
.missing { color: #a00; font-style: italic; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class _Embed(Treeprocessor):
    """Images to data: URIs inside <figure> with a caption, tables in a scrolling box (wide ablation tables)."""

    def __init__(self, md, figures: Mapping[str, bytes], captions: Mapping[str, str]):
        super().__init__(md)
        self.figures, self.captions = figures, captions

    def run(self, root: etree.Element) -> None:
        for parent in list(root.iter()):
            for index, child in enumerate(list(parent)):
                if child.tag == "table":
                    wrap = etree.Element("div", {"class": "table-wrap"})
                    wrap.tail, child.tail = child.tail, None
                    parent.remove(child)
                    wrap.append(child)
                    parent.insert(index, wrap)
                elif child.tag == "p" and len(child) == 1 and child[0].tag == "img" and not (child.text or "").strip() \
                        and not (child[0].tail or "").strip():
                    child.tag = "figure"  # a paragraph holding only an image is a figure: give it its caption
                    self._image(child[0], child)
                elif child.tag == "img":
                    self._image(child, None)

    def _image(self, img: etree.Element, figure: etree.Element | None) -> None:
        name = img.get("src", "")
        alt = img.get("alt", "")
        if name.startswith("data:"):  # embedded already (seen again from its <figure>, or so in the Markdown)
            return
        if name in self.figures:
            img.set("src", data_uri(self.figures[name]))
            img.set("alt", alt or name)
        else:  # never a reference the page would try to load
            img.tag, img.attrib, img.text = "span", {"class": "missing"}, f"[figure {name} was not written]"
        if figure is not None:
            figure.set("id", "fig-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name))
            caption = etree.SubElement(figure, "figcaption")
            label = etree.SubElement(caption, "strong")
            label.text = name
            text = alt if alt and alt != name else self.captions.get(name, "figure written by analyze.py")
            label.tail = ": " + text


def render_html(markdown_text: str, figures: Mapping[str, bytes] | None = None,
                captions: Mapping[str, str] | None = None) -> str:
    """One self-contained HTML page of ``markdown_text`` (the text of report.md): ``figures`` (file name ->
    PNG bytes) are embedded where the Markdown references them, and the others in a closing "Figures" section
    with ``captions`` (default :data:`FIGURE_CAPTIONS`; an explicit Markdown caption wins)."""
    figures = dict(figures or {})
    embed_captions = FIGURE_CAPTIONS if captions is None else captions
    md = markdown.Markdown(extensions=["tables", "toc"], extension_configs={"toc": {"toc_depth": "2-3"}},
                           output_format="html")
    # Markdown passes raw HTML through; our text holds labels, paths and error messages, never markup.
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    embed = _Embed(md, figures, embed_captions)
    md.treeprocessors.register(embed, "hpcm_embed", 5)  # after inline processing has made the <img> elements
    referenced = set(re.findall(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)", markdown_text))
    rest = [name for name in figures if name not in referenced]
    if rest:
        markdown_text = markdown_text.rstrip("\n") + "\n\n## Figures\n\n" + "".join(f"![]({n})\n\n" for n in rest)
    body = md.convert(markdown_text)
    title = next(iter(re.findall(r"^# (.+)$", markdown_text, flags=re.M)), "HPCM sweep analysis")
    toc = getattr(md, "toc", "")
    if toc.count("<li") > 1:  # contents (of the ## and ### sections) after the title
        nav = f'\n<nav class="toc">{toc}</nav>'
        body = body.replace("</h1>", "</h1>" + nav, 1) if "</h1>" in body else nav + body
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_escape(title.replace('`', ''))}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"{body}\n</main>\n</body>\n</html>\n")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

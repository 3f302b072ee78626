"""report.html: the Markdown report as one self-contained page (structure checks always; a real browser when
Chromium is installed)."""

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hpcm_tune.analysis.cli import main
from hpcm_tune.analysis.html import FIGURE_CAPTIONS, render_html
from hpcm_tune.testing import write_experiment_dir

LAMBDAS = (0.0018, 0.0067, 0.013, 0.0483)
WEIGHTS = {"equal": [0.33, 0.33, 0.34], "s1 emphasis": [0.5, 0.3, 0.2], "s2 emphasis": [0.3, 0.4, 0.3],
           "s3 emphasis": [0.2, 0.3, 0.5]}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _trials(study="scale_weights"):
    """The scale-weights study of the other report tests: 4 configurations x 4 lambdas x 3 seeds with per-image
    metrics (s3 emphasis 10 % cheaper), and one errored trial."""
    out = []
    for label, weights in WEIGHTS.items():
        for lmbda in LAMBDAS:
            for seed in (0, 1, 2):
                config = {"objective": "hierarchical", "lmbda": lmbda, "seed": seed, "epochs": 4, "study": study,
                          "label": label, "scale_weights": weights}
                out.append({"config": config, "noise": 0.05, "images": ("kodim01.png", "kodim02.png"),
                            **({"rate_factor": 0.9} if label == "s3 emphasis" else {})})
    out.append({"config": {"objective": "hierarchical", "lmbda": 0.0035, "seed": 0, "epochs": 4, "study": study,
                           "label": "s1 emphasis", "scale_weights": WEIGHTS["s1 emphasis"]},
                "error": True, "epochs_run": 1})
    return out


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, _reference_cache):
    """analyze.py's outputs (figures and reference codecs included) for the small study, built once."""
    root = tmp_path_factory.mktemp("html_report")
    write_experiment_dir(root / "results", "exp", _trials(), study="scale_weights")
    out = root / "out"
    assert main([str(root / "results" / "exp"), "--out", str(out), "--quiet"]) == 0
    return out


class Page(HTMLParser):
    """What the tests read from a page: tables (rows of cell texts), images, figures with their captions, every
    URL-bearing attribute, the visible text, and unbalanced tags (a page that does not parse)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables, self.images, self.figures, self.urls, self.tags = [], [], [], [], []
        self.errors, self.text, self._stack, self._cell, self._caption = [], [], [], None, None
        self._skip = 0
        self.feed(text)
        self.close()
        if self._stack:
            self.errors.append(f"unclosed {self._stack}")
        self.text = " ".join(" ".join(self.text).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        for key in ("src", "href", "srcset", "poster", "data", "action", "background"):
            if attrs.get(key) is not None:
                self.urls.append((tag, key, attrs[key]))
        if tag not in VOID:
            self._stack.append(tag)
        if tag in ("style", "title"):
            self._skip += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs)
            if self._stack and "figure" in self._stack:
                self.figures[-1]["images"].append(attrs)
        elif tag == "figure":
            self.figures.append({"images": [], "caption": ""})
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self._stack or self._stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self._stack[-1:] or 'nothing'}")
            return
        self._stack.pop()
        if tag in ("style", "title"):
            self._skip -= 1
        elif tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "figcaption":
            self.figures[-1]["caption"] = " ".join("".join(self._caption).split())
            self._caption = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        for part in (self._cell, self._caption):
            if part is not None:
                part.append(data)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The GitHub tables of a Markdown text as rows of cells (header first, separator line dropped)."""
    tables, current = [], None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if re.fullmatch(r"\|[-:| ]+\|", line.strip()):
                continue
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            current = current if current is not None else []
            current.append([re.sub(r"`([^`]*)`", r"\1", c) for c in cells])
        elif current is not None:
            tables.append(current)
            current = None
    return tables


def _png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _assert_self_contained(page: Page, text: str) -> None:
    assert not page.errors, page.errors
    for tag, key, url in page.urls:  # only embedded images and links within the page
        assert url.startswith("data:image/png;base64,") if key == "src" else url.startswith("#"), (tag, key, url[:80])
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(page.tags)
    style = text.split("<style>")[1].split("</style>")[0]
    assert "url(" not in style and "@import" not in style
    assert "default-src 'none'; img-src data:" in text  # the CSP: the browser itself refuses any other load


# ---------------------------------------------------------------------------------------------- the real report


def test_report_html_has_every_table_of_the_markdown_and_embeds_every_figure(report_dir):
    md, text = (report_dir / "report.md").read_text(), (report_dir / "report.html").read_text()
    page = Page(text)
    assert not page.errors, page.errors
    expected = markdown_tables(md)
    assert len(expected) >= 8  # ablation, per lambda, leaderboard, paired, 4 per-image tables
    assert page.tables == expected
    assert any("BD-rate vs JPEG (%)" in cell for cell in page.tables[0][0])  # the reference codecs' columns
    written = {p.name: p.read_bytes() for p in report_dir.glob("*.png")}
    assert set(written) == {"rd_curves.png", "weights.png", "gammas.png"}
    embedded = [base64.b64decode(img["src"].split(",", 1)[1]) for img in page.images]
    assert len(embedded) == len(written) and sorted(embedded) == sorted(written.values())
    _assert_self_contained(page, text)


def test_report_html_has_every_line_of_the_markdown_provenance_and_references(report_dir):
    md = (report_dir / "report.md").read_text()
    page = Page((report_dir / "report.html").read_text())
    # Every line that is not a table row, with its Markdown syntax removed, is in the page's text.
    missing = []
    for line in md.splitlines():
        if not line.strip() or line.startswith("|"):
            continue
        plain = re.sub(r"^(#+|-) ", "", line.strip())
        plain = re.sub(r"``? ?(.*?) ?``?", r"\1", plain).replace("**", "")
        plain = re.sub(r"(?<!\w)_(\S.*?)_(?!\w)", r"\1", plain)
        if " ".join(plain.split()) not in page.text:
            missing.append(plain)
    assert not missing, missing
    assert "Provenance:" in md and "analysed by: hpcm-tune" in page.text and "python analyze.py" in page.text
    for codec in ("JPEG", "WebP", "AVIF"):
        assert (codec in md) == (codec in page.text), codec
    assert "JPEG (Pillow" in page.text


def test_every_figure_has_a_caption_that_says_what_its_bars_are(report_dir):
    page = Page((report_dir / "report.html").read_text())
    captions = {fig["caption"].split(":")[0]: fig["caption"] for fig in page.figures}
    assert set(captions) == set(FIGURE_CAPTIONS) and all(len(fig["images"]) == 1 for fig in page.figures)
    rd = captions["rd_curves.png"]
    for words in ("±1 std over seeds", "95 % t-interval", "per-seed paired differences", "JPEG", "collapsed trial",
                  "thick black"):
        assert words in rd, words
    assert "±1 std" in captions["weights.png"] and "at most 5 configurations" in captions["gammas.png"]
    assert page.text.index("Errored trials:") < page.text.rindex("Figures")  # the figures close the page


def test_report_html_without_figures(tmp_path, _reference_cache):
    write_experiment_dir(tmp_path / "results", "exp", _trials()[:16], study="scale_weights")
    out = tmp_path / "out"
    assert main([str(tmp_path / "results" / "exp"), "--out", str(out), "--quiet", "--no-plots", "--no-reference"]) == 0
    text = (out / "report.html").read_text()
    page = Page(text)
    assert not page.images and not page.figures and "Figures" not in page.text
    assert page.tables == markdown_tables((out / "report.md").read_text()) and page.tables
    _assert_self_contained(page, text)


# ---------------------------------------------------------------------------------------------- render_html


def test_new_markdown_sections_and_their_figures_appear_without_more_work():
    # What a later section (e.g. search sweeps) adds to report.md: a heading, a table, a referenced figure.
    md = ("# HPCM sweep analysis\n\nIntro.\n\n## Search sweep `tpe`\n\nBest so far:\n\n| trial | loss |\n|---|---|\n"
          "| a \\| b | 0.25 |\n\n![Best loss against trials, mean over seeds](search_progress.png)\n\nAfter.\n")
    figures = {"search_progress.png": _png(), "rd_curves.png": _png(color=(0, 0, 200)), "extra.png": _png()}
    page = Page(text := render_html(md, figures))
    assert page.tables == [[["trial", "loss"], ["a | b", "0.25"]]]
    names = [fig["caption"].split(":")[0] for fig in page.figures]
    assert names == ["search_progress.png", "rd_curves.png", "extra.png"]  # referenced in place, then the rest
    assert page.figures[0]["caption"] == "search_progress.png: Best loss against trials, mean over seeds"
    assert page.figures[1]["caption"] == "rd_curves.png: " + " ".join(FIGURE_CAPTIONS["rd_curves.png"].split())
    assert page.figures[2]["caption"] == "extra.png: figure written by analyze.py"
    assert page.text.index("Best so far") < page.text.index("search_progress.png") < page.text.index("After.") \
        < page.text.rindex("Figures") < page.text.index("rd_curves.png")
    decoded = [base64.b64decode(img["src"].split(",", 1)[1]) for img in page.images]
    assert decoded == [figures["search_progress.png"], figures["rd_curves.png"], figures["extra.png"]]
    assert '<a href="#search-sweep-tpe">' in text  # the contents list links the new section
    _assert_self_contained(page, text)


def test_a_missing_figure_is_a_note_and_raw_html_in_the_markdown_is_text():
    md = ("# R\n\n## S\n\n![gone](gone.png)\n\n- error: <img src=\"http://example.com/x.png\"> "
          "<script>alert(1)</script> & `<b>`\n")
    page = Page(text := render_html(md, {}))
    assert not page.images and "[figure gone.png was not written]" in page.text
    assert '<img src="http://example.com/x.png"> <script>alert(1)</script> & <b>' in page.text
    _assert_self_contained(page, text)


# ---------------------------------------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


CHECK = """<script nonce="hpcm-check">
var problems = [];
function short(text) { return String(text).slice(0, 80); }
addEventListener("error", function (e) {
  var t = e.target;
  if (t && t !== window) problems.push("failed: " + short(t.src || t.href || t.tagName));
}, true);
document.addEventListener("securitypolicyviolation", function (e) {
  problems.push("blocked: " + short(e.blockedURI));
});
addEventListener("load", function () {
  function box(el) {
    var r = el.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width, r.height];
  }
  function shown(el) { var s = getComputedStyle(el), r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none"; }
  function loaded(img) { return img.complete && img.naturalWidth > 0; }
  var images = Array.from(document.images), tables = Array.from(document.querySelectorAll("table"));
  var out = {images: images.length, loaded: images.filter(loaded).length,
    images_shown: images.filter(shown).length, boxes: images.map(box), tables: tables.length,
    tables_shown: tables.filter(shown).length, height: document.documentElement.scrollHeight, problems: problems,
    resources: performance.getEntriesByType("resource").map(function (e) { return e.name; })};
  var pre = document.createElement("pre"); pre.id = "hpcm-check"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


WIDTH = 1400  # browser window, CSS px (device scale factor 1)


def _run(cmd: list[str], tmp_path: Path) -> str:
    args = [cmd[0], "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}", *cmd[1:]]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_report_html_in_headless_chromium(report_dir, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it): no browser check")
    from PIL import Image

    text = (report_dir / "report.html").read_text()
    assert "<head>\n" in text
    # A test copy with a checking script; its CSP allows that one script and is otherwise the report's.
    checked = text.replace("default-src 'none';", "default-src 'none'; script-src 'nonce-hpcm-check';", 1)
    (tmp_path / "check.html").write_text(checked.replace("<head>\n", "<head>\n" + CHECK + "\n", 1))
    dom = _run([chromium, f"--window-size={WIDTH},1000", "--virtual-time-budget=15000", "--dump-dom",
                (tmp_path / "check.html").as_uri()], tmp_path)
    found = re.search(r'<pre id="hpcm-check">(.*?)</pre>', dom, flags=re.S)
    assert found, dom[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["problems"] == [] and all(r.startswith("data:") for r in check["resources"]), check
    assert check["images"] == 3 and check["loaded"] == 3 and check["images_shown"] == 3, check
    tables = len(markdown_tables((report_dir / "report.md").read_text()))
    assert check["tables"] == tables and check["tables_shown"] == tables, check

    # The page as a reader sees it (the report itself, not the test copy), whole and at the width the boxes were
    # measured at: nothing blank, and every figure painted where the DOM says it is.
    page_height = min(int(check["height"]), 16000)
    shot = tmp_path / "report.png"
    _run([chromium, f"--window-size={WIDTH},{page_height}", f"--screenshot={shot}",
          (report_dir / "report.html").as_uri()], tmp_path)
    image = Image.open(shot).convert("L")
    assert image.size == (WIDTH, page_height)
    dark = sum(image.histogram()[:200]) / (image.size[0] * image.size[1])
    assert dark > 0.01, f"screenshot nearly blank: {dark:.4f} of the pixels are not white"
    for left, top, width, height in check["boxes"]:
        assert width > WIDTH / 2 and top + height <= page_height, (left, top, width, height)
        crop = image.crop((int(left) + 2, int(top) + 2, int(left + width) - 2, int(top + height) - 2))  # no border
        painted = sum(crop.histogram()[:200]) / (crop.size[0] * crop.size[1])
        assert painted > 0.02, f"figure at {top:.0f} px looks blank ({painted:.4f} of its pixels not white)"

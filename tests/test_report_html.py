"""Whatever a model or a prompt file writes reaches report.html as text, never as live HTML."""

from __future__ import annotations

from html.parser import HTMLParser

from lite_delta.report import to_html

HOSTILE = [
    "<img src=x onerror=alert(document.domain)>",
    "<script>alert(1)</script>",
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    "[click]( JaVaScRiPt:alert(1))",
    "![pic](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "<div onmouseover=alert(1)>hover</div>",
]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_model_text_in_a_report_stays_text():
    answers = "\n>\n".join(f"> {line}" for line in HOSTILE)
    html = to_html(f"# Quick check\n\n**tuned:**\n\n{answers}\n\n![utility](figures/utility.png)\n", "t")
    parser = Tags()
    parser.feed(html.split("<body>", 1)[1])
    names = {tag for tag, _ in parser.tags}
    assert not names & {"script", "div"}, names
    for tag, attrs in parser.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for a in ("href", "src"):
            assert not (attrs.get(a) or "").strip().lower().startswith(("javascript:", "data:")), (tag, attrs)
    assert [attrs["src"] for tag, attrs in parser.tags if tag == "img" and "src" in attrs] == ["figures/utility.png"]
    assert "&lt;img src=x onerror=alert(document.domain)&gt;" in html  # shown, as text
    assert "<table>" in to_html("| a | b |\n|---|---|\n| 1 | 2 |\n", "t")

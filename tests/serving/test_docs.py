"""`facetrust serve --help` sends operators to serving/HTTP_API.md: it must say what README does."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_http_api_doc_is_the_readme_section() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## HTTP API") : readme.index("\n## ", readme.index("## HTTP API") + 1)]
    doc = (REPO / "serving" / "HTTP_API.md").read_text()
    assert doc.strip() == section.strip(), (
        "serving/HTTP_API.md differs from README's 'HTTP API' section: copy the section over"
    )
    assert "GET /v1/jobs/{id}/report" in doc and "report=true" in doc

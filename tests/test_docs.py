"""The documentation pages the README promises exist, link only inside the repository,
and the Python API page is what the docstrings say now."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = ("architecture.md", "registering-your-data.md", "python-api.md", "outputs.md",
         "reliability.md", "paper-study.md", "pipelines.md")


def test_the_python_api_page_is_current():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "api_docs.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_docs_exist_are_linked_from_the_readme_and_link_inside():
    readme = (REPO / "README.md").read_text()
    for page in PAGES:
        assert (REPO / "docs" / page).is_file(), page
        assert f"docs/{page}" in readme, f"README does not link docs/{page}"
        text = (REPO / "docs" / page).read_text()
        for target in re.findall(r"\]\(([^)]+)\)", text):
            assert not re.match(r"[a-z]+://", target), f"{page} links outside: {target}"

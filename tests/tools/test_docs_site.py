"""The documentation site: ``mkdocs build --strict`` (no broken link, anchor or reference), the
generated reference pages hold every component and every command option, and the built site
renders in a real headless browser (Debian's Chromium): every page, its pictures, the search.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tools_testkit import REPO

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")
yaml = pytest.importorskip("yaml")


def _hook():
    spec = importlib.util.spec_from_file_location("docs_hook", REPO / "docs/hooks/generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages() -> list[str]:
    """The pages of mkdocs.yml's nav, in order (paths under docs/)."""

    def walk(entries) -> Iterator[str]:
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(value, list):
                yield from walk(value)
            else:
                yield value

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    return list(walk(config["nav"]))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-5000:]}"
    return out


def page_url(page: str) -> str:
    """The built page of ``docs/PAGE``: use_directory_urls, as MkDocs does by default."""
    stem = page.removesuffix(".md")
    if stem == "index":
        return ""
    return (stem.removesuffix("/index") if stem.endswith("/index") else stem) + "/"


def test_every_page_of_docs_is_in_the_nav():
    pages = set(nav_pages())
    on_disk = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert on_disk == pages, "add the page to mkdocs.yml's nav, or remove it"


def test_the_components_page_lists_every_component_with_its_arguments(site):
    hook = _hook()
    html = (site / "reference/components/index.html").read_text()
    count = 0
    for module_name, _ in hook.COMPONENT_MODULES:
        for cls in hook.component_classes(module_name):
            identifier = f"{module_name}.{cls.__name__}"
            assert f'id="{identifier}"' in html, f"{identifier}: no entry on the components page"
            count += 1
    assert count >= 60
    # arguments, with their defaults, from the code (mkdocstrings' signature and the table)
    for fragment in ("norm_value", "max_jitter", "decay_power", "num_iterations", "x_min"):
        assert fragment in html
    from mei.postprocessing import ChannelNormClip

    assert "exact" in str(__import__("inspect").signature(ChannelNormClip))


def test_the_command_page_has_every_command_and_option(site):
    from mei.cli import build_parser

    html = (site / "reference/cli/index.html").read_text()
    options = set()

    def collect(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            options.update(s for s in action.option_strings if s not in ("-h", "--help"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    collect(sub)

    collect(build_parser())
    assert {"--batch-size", "--device", "--capture", "--clear-errors", "--units"} <= options
    missing = sorted(o for o in options if o not in html)
    assert not missing, f"options missing from the command reference: {missing}"
    for command in ("mei demo", "mei generate", "mei status", "mei worker", "mei db start"):
        assert f"<code>{command}</code>" in html, command


def test_the_performance_page_shows_the_measured_figures(site):
    """benchmarks/README.md, included whole: its tables with machine, command and figures."""
    html = (site / "performance/index.html").read_text()
    benchmarks = (REPO / "benchmarks/README.md").read_text()
    for heading in [line[3:] for line in benchmarks.splitlines() if line.startswith("## ")]:
        title = heading.replace("`", "")
        assert title.split(":")[0] in html.replace("<code>", "").replace("</code>", ""), heading
    assert html.count("<table>") >= 5


def chromium() -> str:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no chromium (Debian: apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def served(site) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


IMAGES_LOADED = """() => [...document.querySelectorAll('article img')].map(
    img => [img.getAttribute('src'), img.complete && img.naturalWidth > 0])"""


def test_the_site_renders_in_a_browser(served):
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = chromium()
    pictures, titles = {}, {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # a request that failed (not one cut short by going to the next page): e.g. a font
            # from the internet, which a reader's machine may not reach
            page.on(
                "requestfailed",
                lambda request: (
                    "ERR_ABORTED" in (request.failure or "")
                    or errors.append(f"{request.url}: {request.failure}")
                ),
            )
            for name in nav_pages():
                response = page.goto(served + page_url(name), wait_until="load")
                assert response is not None and response.status == 200, name
                titles[name] = page.locator("article h1").first.inner_text().rstrip("¶")
                for src, loaded in page.evaluate(IMAGES_LOADED):
                    assert loaded, f"{name}: the picture {src} did not render"
                    pictures[src.rsplit("/", 1)[-1]] = name
            assert not errors, errors  # no script error, no request that failed
            assert titles["getting-started.md"] == "First picture in two commands"
            assert titles["reference/components.md"] == "Components reference"
            shown = set(pictures)
            expected = {p.name for p in (REPO / "docs/images").iterdir()}
            assert expected <= shown, f"pictures not shown on any page: {expected - shown}"

            # the search: type into the search box (as a reader does: key by key), and find
            # the component's entry on the components page
            page.goto(served, wait_until="load")
            page.locator(".md-search__input").click()
            page.locator(".md-search__input").type("ChannelNormClip", delay=20)
            results = page.locator(".md-search-result__item a")
            results.first.wait_for(timeout=30000)
            links = [results.nth(i).get_attribute("href") or "" for i in range(results.count())]
            assert any("reference/components/" in link for link in links), links
            assert any(link.endswith("#mei.postprocessing.ChannelNormClip") for link in links)
        finally:
            browser.close()

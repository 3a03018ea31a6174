"""`provision demo` (what `bash bootstrap demo` runs, the README's first command): published, yanked,
served by nginx, installed by pip, and the browsable site it points a newcomer at, twice over the same
directory (a second run changes nothing)."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
from pathlib import Path

from provisioner.appliance import demo, sample
from provisioner.appliance.serve import free_port
from provisioner.repo import layout
from provisioner.repo.engine import Repository
from tests.fixtures.nginx import PROVISION
from tests.fixtures.proxy import ForwardProxy


def _demo(repo: Path, env: dict[str, str] | None = None) -> str:
    port = free_port()
    proc = subprocess.run(
        [PROVISION, "demo", "--repo", str(repo), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _page(repo: Path, project: str | None = None) -> str:
    path = repo / (layout.ui_project(project) if project else layout.UI_LIST)
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


def test_the_demo_installs_and_shows_its_site_twice(
    nginx_bin: str, tmp_path: Path, proxy: ForwardProxy
) -> None:
    repo = tmp_path / "demo-repo"
    # Behind a corporate proxy (http_proxy set, localhost not in no_proxy): pip and the site's check
    # ask the demo's own nginx, never the proxy.
    first = _demo(repo, proxy.env())
    assert proxy.asked == []
    assert "hello pypapo, from a private index (greeting 1.1.0)" in first
    assert "published 4, already present 0" in first and "2 files yanked" in first
    browse = re.search(r"^    (http://127\.0\.0\.1:\d+/ui/)  every project", first, re.M)
    assert browse is not None, first
    assert f"{browse[1]}{demo.LIBRARY}/  its README" in first

    # What the demo said it showed is in the site it wrote: READMEs of both kinds, the yank's reason.
    greeting, app = _page(repo, demo.LIBRARY), _page(repo, demo.APP)
    assert ">Use it</h2>" in greeting and '<span class="kn">from</span>' in greeting  # highlighted
    assert demo.YANK_REASON in greeting
    assert ">Run it</h2>" in app
    assert demo.LIBRARY in _page(repo) and demo.APP in _page(repo)

    again = _demo(repo)
    assert "published 0, already present 4, skipped 0" in again and "already yanked" in again
    assert "hello pypapo" in again and "/ui/  every project" in again


def test_the_demo_over_a_repository_an_older_pypapo_demo_filled(nginx_bin: str, tmp_path: Path) -> None:
    """Its examples were built without READMEs then: the same filenames with other bytes are skipped,
    the demo says so and checks the site for what those show (the yank), and succeeds."""
    repo, old = tmp_path / "demo-repo", tmp_path / "old"

    def greeting(v: str) -> dict[str, str]:  # (the code the older demo built: the same)
        return {"pypapo_demo_greeting/__init__.py": f'def greet(name):\n    return f"hello {{name}} ({v})"\n'}

    app = {
        "pypapo_demo_app/__init__.py": (
            "from pypapo_demo_greeting import greet\ndef main():\n    print(greet('x'))\n"
        )
    }
    files = [
        sample.build_wheel(old, demo.LIBRARY, "1.0.0", modules=greeting("1.0.0")),
        sample.build_sdist(old, demo.LIBRARY, "1.0.0", modules=greeting("1.0.0")),
        sample.build_wheel(old, demo.LIBRARY, "1.1.0", modules=greeting("1.1.0")),
        sample.build_wheel(old, demo.APP, "1.0.0", requires_dist=[f"{demo.LIBRARY}>=1.0"], modules=app),
    ]
    Repository.open(str(repo)).publish(files)
    out = _demo(repo)
    assert "published 0, already present 0, skipped 4" in out
    assert "holds the examples as an older pypapo built them" in out
    assert "2 files yanked" in out and "/ui/  every project" in out
    assert demo.YANK_REASON in _page(repo, demo.LIBRARY)

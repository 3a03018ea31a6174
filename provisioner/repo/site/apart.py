"""A long reStructuredText README rendered in a child process, with a deadline and a memory limit.

docutils is pure Python: ~15-30 us a character, and worse on some shapes (fuzzing found 200 kB that
took 31 s), and nothing in the process can stop it once it has started. The bounds (`bounds`) refuse
what is known to explode before it starts; what is left is slow, not unbounded, and a README long
enough to be slow renders here, where the clock and the kernel can stop it: the publish and every
reindex go on, and the README is shown as plain text with why.

The child is this module's `child` (a new interpreter, not a fork: the parent may hold threads and
locks): the README on stdin, one status byte and the HTML on stdout.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from provisioner.repo.site import bounds

# An RST README longer than this (characters) renders in a child: ~0.5 s of docutils at least,
# beside which starting the child (~0.1 s) is small; shorter ones render in the process.
RST_APART = 32_000
# The child's time (wall clock, seconds) and address space (bytes): a real 256 kB README (the most
# that is rendered) takes docutils 4-8 s and a few hundred MB.
RST_SECONDS = 20.0
RST_MEMORY = 2 << 30

_HTML, _INTRICATE, _FAILED = b"H", b"I", b"F"
_CODEC = ("utf-8", "surrogatepass")  # metadata may hold lone surrogates (undecodable bytes)
# What a renderer raises on hostile input (docutils recursing past Python's limit...): the README
# is shown as text, as PyPI shows one that does not render.
FAILURES = (RecursionError, MemoryError, ValueError, TypeError, LookupError, AttributeError)

# The child imports this very module, wherever it is (an editable install, a source tree on sys.path).
_ROOT = str(Path(__file__).resolve().parents[3])
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from provisioner.repo.site import apart; apart.child(int(sys.argv[2]))"
)


def render_rst(description: str) -> str | None:
    """`readme_renderer.rst.render(description)` after `bounds.check_rst`, in a child; None when it
    fails (as readme_renderer's None). Raises `bounds.Intricate` when it is refused, too big, or
    takes longer than RST_SECONDS."""
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", _CHILD, _ROOT, str(RST_MEMORY)],  # -P: not the working directory
            input=description.encode(*_CODEC),
            capture_output=True,
            timeout=RST_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:  # run() has killed the child
        raise bounds.Intricate(f"This README took docutils more than {RST_SECONDS:g} s to render") from None
    except OSError:  # no process to be had (fork refused): as a README that fails to render
        return None
    status, body = done.stdout[:1], done.stdout[1:].decode(*_CODEC)
    if done.returncode != 0 or status not in (_HTML, _INTRICATE):
        return None  # killed (out of memory, a crash): PyPI shows what does not render as text
    if status == _INTRICATE:
        raise bounds.Intricate(body)
    return body


def child(memory: int) -> None:
    """The child's side: the README from stdin, rendered within `memory` bytes, to stdout."""
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    import readme_renderer.rst  # after the limit: what docutils allocates is bounded too

    description = sys.stdin.buffer.read().decode(*_CODEC)
    try:
        bounds.check_rst(description)
        html = readme_renderer.rst.render(description)
        bounds.check_size(html)
    except bounds.Intricate as why:
        sys.stdout.buffer.write(_INTRICATE + str(why).encode(*_CODEC))
        return
    except FAILURES:
        html = None
    sys.stdout.buffer.write(_FAILED if html is None else _HTML + html.encode(*_CODEC))

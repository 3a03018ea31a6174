"""Pure: the derived outputs, what is rendered from the state and written after each change of it.

The state is the project JSON (`simple/<project>/index.json`) and the root JSON (`simple/index.json`).
Every other page is *derived*: a pure function of one of them, stored under a name of its own. The
engine writes derived outputs in one place only (`writer.IndexWriter`, by the convergence protocol
of the engine docstring), after publish, yank, unyank, remove and reindex alike; to add an output,
add it to `DEFAULT` (or pass your own `Outputs` to `Repository`), nothing else.

A project output exists exactly while its project JSON does (it is deleted with the project); a root
output always exists once the root JSON does. Renderers must be module-level functions (reindex
renders in worker processes) and deterministic (reindex rewrites an output whose bytes differ).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from provisioner.repo import layout, pages
from provisioner.repo.model import ProjectState, RootState


@dataclass(frozen=True)
class ProjectOutput:
    """An object rendered from one project's state, e.g. its PEP 503 HTML page."""

    object_name: Callable[[str], str]  # normalized project name -> object name
    render: Callable[[ProjectState], bytes]


@dataclass(frozen=True)
class RootOutput:
    """An object rendered from the root state, e.g. the PEP 503 root page."""

    object_name: str
    render: Callable[[RootState], bytes]


@dataclass(frozen=True)
class Outputs:
    project: tuple[ProjectOutput, ...]
    root: tuple[RootOutput, ...]

    def project_names(self, project: str) -> list[str]:
        return [out.object_name(project) for out in self.project]

    def render_project(self, state: ProjectState) -> tuple[bytes, ...]:
        """Every project output's bytes for `state`, in the order of `project`."""
        return tuple(out.render(state) for out in self.project)


SIMPLE_HTML = Outputs(
    project=(ProjectOutput(layout.project_html, pages.render_project_html),),
    root=(RootOutput(layout.ROOT_HTML, pages.render_root_html),),
)
DEFAULT = SIMPLE_HTML

"""Commands: render (the VM's files), serve (the local stack), demo (the README's main command)."""

from __future__ import annotations

from pathlib import Path

import click

from provisioner.appliance.render import ApplianceConfig, render_startup_script, render_vm_files
from provisioner.errors import PypapoError

STARTUP_SCRIPT_NAME = "startup-script.sh"


def _config_options(f):
    options = [
        click.option("--bucket", envvar="PYPAPO_BUCKET", required=True, help="GCS bucket name (no gs://)."),
        click.option("--prefix", default="", show_default=True, help="Object prefix inside the bucket."),
        click.option("--port", default=3333, show_default=True, type=int, help="Serving port on the VM."),
        click.option("--mount-path", default=ApplianceConfig.mount_path, show_default=True),
        click.option(
            "--metadata-cache-ttl-secs",
            default=ApplianceConfig.metadata_cache_ttl_secs,
            show_default=True,
            type=int,
            help="How long gcsfuse trusts a stat/listing (the publish-to-visible delay).",
        ),
        click.option(
            "--stat-cache-max-size-mb", default=ApplianceConfig.stat_cache_max_size_mb, show_default=True
        ),
        click.option(
            "--file-cache-max-size-mb", default=ApplianceConfig.file_cache_max_size_mb, show_default=True
        ),
        click.option("--file-cache-dir", default=ApplianceConfig.file_cache_dir, show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _write_tree(out: Path, files: dict[str, str]) -> list[Path]:
    written = []
    for vm_path, text in files.items():
        target = out / vm_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    return written


@click.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write into; VM paths are kept below it (OUT/etc/pypapo/nginx.conf, ...).",
)
@_config_options
def render(out: Path, **options: object) -> None:
    """Write every file the VM gets, as it gets it, plus the startup script that installs them."""
    cfg = ApplianceConfig(**options)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    written = _write_tree(out, render_vm_files(cfg))
    script = out / STARTUP_SCRIPT_NAME
    script.write_text(render_startup_script(cfg))
    script.chmod(0o755)
    for path in [*written, script]:
        click.echo(str(path))


@click.command()
@click.option(
    "--repo",
    required=True,
    type=click.Path(path_type=Path),
    envvar="PYPAPO_REPO",
    help="Directory repository to serve (what gcsfuse shows of the bucket).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=3333, show_default=True, type=int, help="Port (0 picks a free one).")
@click.option(
    "--access-log",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the access log to this file (default: standard output).",
)
def serve(repo: Path, host: str, port: int, access_log: str | None) -> None:
    """Serve a directory repository with Debian's nginx in the foreground, until Ctrl-C."""
    from provisioner.appliance.serve import serve_forever

    if str(repo).startswith("gs://"):
        raise PypapoError("serve takes a directory; the bucket is served by the VM (provision create)")
    serve_forever(repo, host=host, port=port, access_log=access_log)


@click.command()
@click.option(
    "--repo",
    default="demo-repo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory repository to publish the examples into (kept afterwards).",
)
@click.option("--port", default=3333, show_default=True, type=int, help="Port (0 picks a free one).")
@click.option("--keep-serving", is_flag=True, help="Keep serving after the demo until Ctrl-C.")
def demo(repo: Path, port: int, keep_serving: bool) -> None:
    """Publish example packages into a local repository, serve it with nginx, and pip-install from it."""
    from provisioner.appliance.demo import run_demo

    run_demo(repo=repo, port=port, keep_serving=keep_serving, echo=click.echo)


COMMANDS: list[click.Command] = [render, serve, demo]

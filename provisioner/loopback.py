"""HTTP to this machine's own ports (the nginx of `provision serve` and the demo, gcloud's end of the
IAP tunnel), never through a proxy.

urllib takes `http_proxy` from the environment and, unless `no_proxy` names the loopback address,
sends even `http://127.0.0.1:PORT/` to that proxy: behind a corporate proxy every health check would
ask a machine that cannot reach this one's loopback (a tunnel judged broken, a server that never came
up).
"""

from __future__ import annotations

import urllib.error
import urllib.request

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Addresses that name this machine, for the environment of a tool pointed at a local URL.
NO_PROXY = "127.0.0.1,localhost,::1"


def get(url: str, *, timeout: float, limit: int = 1 << 20) -> tuple[int, bytes]:
    """The status and (up to `limit` bytes of) body of GET `url`; an HTTP error is its status.
    Raises OSError when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read(limit)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(limit)


def without_proxy_for_loopback(env: dict[str, str]) -> dict[str, str]:
    """`env` with the loopback addresses added to no_proxy (both spellings: tools read either)."""
    current = env.get("no_proxy") or env.get("NO_PROXY") or ""
    value = f"{current},{NO_PROXY}" if current else NO_PROXY
    return {**env, "no_proxy": value, "NO_PROXY": value}


def environment_proxy(scheme: str, host: str) -> str | None:
    """The proxy URL this environment names for `scheme`://`host`/ (`https_proxy`, `http_proxy`,
    `all_proxy`, either case), as pip and uv read them; None when there is none or `no_proxy` names
    the host."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    return None if not url or urllib.request.proxy_bypass_environment(host, proxies) else url


def proxy_warning(host: str) -> str | None:
    """A line for the user when this environment would send `http://HOST/` to a proxy (`http_proxy`
    set, `no_proxy` not naming HOST): pip, uv and the others run from this shell would ask the proxy
    for the local index, which it cannot reach. None when they would not."""
    if environment_proxy("http", host) is None:
        return None
    hosts = NO_PROXY if host in NO_PROXY.split(",") else f"{host},{NO_PROXY}"
    value = f'"$no_proxy,{hosts}"' if urllib.request.getproxies_environment().get("no") else hosts
    return (
        f"warning: http_proxy is set and no_proxy does not name {host}: pip, uv and the other tools "
        f"would ask the proxy for this index; export no_proxy={value}"
    )

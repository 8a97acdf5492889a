"""Where a deployed app is reached: its public port on each server, and its URL.

An app with a domain is reached at the domain. One without gets a public port per server
it is placed on, from the `app_ports` setting, unique on that server and kept for as long
as the app is placed there: the agent's nginx listens on it and proxies to whichever
release is live, so the URL `http://<server address>:<public port>` survives releases
(docs/deploys.md, "Every app has a URL").
"""

from __future__ import annotations

from serverflow.models import App, AppServer, Server
from serverflow_contract.desired import check_address
from serverflow_contract.naming import InvalidName


class NoPublicPort(Exception):
    """Every port of the range is taken on the server."""


def next_port(ports: tuple[int, int], taken: set[int], last: int | None) -> int | None:
    """The first port of `ports` after `last` that is not taken, coming round to the start
    of the range (so a freed port is given again only once the others have been)."""
    low, high = ports
    start = last + 1 if last is not None and low <= last < high else low
    for port in (*range(start, high + 1), *range(low, start)):
        if port not in taken:
            return port
    return None


async def public_port(placement: AppServer, ports: tuple[int, int]) -> int:
    """The placement's public port, given now if it has none yet (inside `scoped`)."""
    if placement.public_port is not None:
        return placement.public_port
    # The server's row is locked while its ports are counted (PostgreSQL; SQLite runs one
    # writing transaction at a time), and a unique index backs it up.
    server = await Server.select_for_update().get(id=placement.server_id)
    taken = {
        p.public_port
        for p in await AppServer.filter(server_id=server.id, public_port__isnull=False)
        if p.public_port is not None
    }
    port = next_port(ports, taken, server.last_public_port)
    if port is None:
        low, high = ports
        raise NoPublicPort(
            f"every public port of {low}-{high} is taken on {server.name}: delete an app "
            "there, or widen the range (setting app_ports, SERVERFLOW_APP_PORTS)"
        )
    await AppServer.filter(id=placement.id, public_port__isnull=True).update(public_port=port)
    await Server.filter(id=server.id).update(last_public_port=port)
    placement.public_port = port
    return port


def server_host(server: Server) -> str | None:
    """The host part of URLs on `server`: the address its agent reports, else the host name
    it registered with if that looks like one others can resolve (it has a dot)."""
    for candidate in (server.address, server.hostname if "." in server.hostname else None):
        if not candidate:
            continue
        try:
            host = check_address(candidate)
        except InvalidName:
            continue
        return f"[{host}]" if ":" in host else host
    return None


def app_url(app: App, placement: AppServer, server: Server) -> str | None:
    """The app's URL on `server`: its first domain (https with TLS), else its public port
    there once a live release is served on it; None when there is none (yet)."""
    if app.domains:
        return f"{'https' if app.tls else 'http'}://{app.domains[0]}"
    host = server_host(server)
    if placement.public_port is None or not placement.public_port_served or host is None:
        return None
    return f"http://{host}:{placement.public_port}"

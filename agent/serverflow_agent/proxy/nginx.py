"""nginx configuration per app: render, apply safely, and wait until nginx serves it.

One file `<conf_dir>/<app>.conf` per app, plus `<conf_dir>/00-serverflow.conf` for what must
exist once at http level. An app's file has a server block per scheme for its domains, and
one listening on its public port (any Host), if it has one.

A change is a small transaction: files are written atomically (staged in a sibling
directory nginx does not include, then renamed), the whole configuration is validated
with `nginx -t`, nginx is reloaded, and the change only counts once nginx answers with
the new release's `X-ServerFlow-Release` header, because
`nginx -s reload` exits 0 even when the master cannot apply the configuration. Any failure
puts the previous files back, so the other apps (and this one) keep being served.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverflow_agent.deploy.settings import NginxSettings
from serverflow_agent.proxy.errors import CertificateError, ProxyError
from serverflow_agent.proxy.probe import RELEASE_HEADER, Answer, probe
from serverflow_agent.proxy.routes import (
    SHARED_NAME,
    Route,
    check_app,
    check_domains,
    check_fs_path,
    check_release,
    checked,
)

META_PREFIX = "# serverflow-site: "
# Our own name: hosts often define the usual $connection_upgrade, and a second map breaks nginx.
UPGRADE_VARIABLE = "$serverflow_connection_upgrade"
SHARED_CONF = f"""# Written by the ServerFlow agent: what all app server blocks share (http level).
map $http_upgrade {UPGRADE_VARIABLE} {{
    default upgrade;
    ''      close;
}}
"""
COMMAND_TIMEOUT = 60.0
STEADY_PROBES, STEADY_SECONDS = 3, 0.1
RELOAD_HINT = (
    "a reload nginx could not apply (a port in use, an unreadable certificate) "
    "looks like this: see nginx's error log"
)
MAX_REASON = 1200
PORT_HOST = "localhost"  # the Host of probes on a public port (its server block takes any)


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Site:
    """One app's proxy configuration: its route, the release it serves, its certificate."""

    app: str
    route: Route
    release: str
    tls: Tls | None = None


@dataclass(frozen=True)
class SiteInfo:
    """What an app's file on disk says (read back from its first line)."""

    app: str
    kind: str  # "site", or "challenge" for the HTTP-only file used while a certificate is issued
    release: str | None
    domains: list[str]
    path: str
    tls: bool
    public_port: int | None = None


def render(site: Site, settings: NginxSettings, webroot: Path) -> str:
    """The text of `<app>.conf`. Values are checked first; a bad one raises ProxyError."""
    app = check_app(site.app)
    release = check_release(site.release)
    route = checked(site.route)
    webroot_text = check_fs_path(webroot, "ACME webroot")
    meta: dict[str, Any] = {
        "app": app,
        "kind": "site",
        "release": release,
        "domains": route.domains,
        "path": route.path,
        "tls": site.tls is not None,
    }
    if route.public_port is not None:
        meta["public_port"] = route.public_port
    names = " ".join(route.domains)
    header = f'add_header {RELEASE_HEADER} "{release}" always;'
    out = [META_PREFIX + json.dumps(meta, sort_keys=True), "# Written by the ServerFlow agent."]
    app_locations = _app_locations(route)
    if route.public_port is not None:
        # Its own port: whatever the Host, no certificate (an IP address gets none). The
        # app is told the port it was reached on, for the URLs it makes.
        at_port = _app_locations(route, host="$host:$server_port")
        out += _server(f"listen {route.public_port};", "_", header, None, at_port)
    if route.domains and site.tls is None:
        out += _server(f"listen {settings.http_port};", names, header, webroot_text, app_locations)
    elif route.domains and site.tls is not None:
        cert = check_fs_path(site.tls.cert, "certificate path")
        key = check_fs_path(site.tls.key, "certificate key path")
        port = "" if settings.https_port == 443 else f":{settings.https_port}"
        redirect = ["location / {", f"    return 301 https://$host{port}$request_uri;", "}"]
        out += _server(f"listen {settings.http_port};", names, header, webroot_text, redirect)
        tls_lines = [
            f"listen {settings.https_port} ssl;",
            f"ssl_certificate {cert};",
            f"ssl_certificate_key {key};",
        ]
        out += _server("\n    ".join(tls_lines), names, header, webroot_text, app_locations)
    return "\n".join(out) + "\n"


def render_challenge(app: str, domains: list[str], settings: NginxSettings, webroot: Path) -> str:
    """An HTTP-only server block answering ACME HTTP-01 challenges for domains not served yet."""
    names = check_domains(domains)
    meta: dict[str, Any] = {"app": check_app(app), "kind": "challenge", "release": None}
    meta.update(domains=names, path="/", tls=False)
    out = [META_PREFIX + json.dumps(meta, sort_keys=True), "# Written by the ServerFlow agent."]
    out += _server(
        f"listen {settings.http_port};",
        " ".join(names),
        "",
        check_fs_path(webroot, "ACME webroot"),
        ["location / {", "    return 404;", "}"],
    )
    return "\n".join(out) + "\n"


def _server(
    listen: str, names: str, header: str, webroot: str | None, locations: list[str]
) -> list[str]:
    # Always plain HTTP and never proxied: certificate issuance and renewal need it.
    acme = [
        "location ^~ /.well-known/acme-challenge/ {",
        f"    root {webroot};",
        "    default_type text/plain;",
        "    try_files $uri =404;",
        "}",
    ]
    body = [
        listen,
        f"server_name {names};",
        *([header] if header else []),
        "",
        *(acme if webroot is not None else []),
        *locations,
    ]
    return ["", "server {", *(f"    {line}" if line else "" for line in body), "}"]


def _app_locations(route: Route, host: str = "$host") -> list[str]:
    prefix = route.path
    if route.upstream_port is not None:
        proxy = [
            f"    proxy_pass http://127.0.0.1:{route.upstream_port};",
            "    proxy_http_version 1.1;",
            f"    proxy_set_header Host {host};",
            "    proxy_set_header Upgrade $http_upgrade;",
            f"    proxy_set_header Connection {UPGRADE_VARIABLE};",
            "    proxy_set_header X-Real-IP $remote_addr;",
            "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "    proxy_set_header X-Forwarded-Proto $scheme;",
            f"    proxy_set_header X-Forwarded-Host {host};",
            f"    proxy_hide_header {RELEASE_HEADER};",
            "    proxy_read_timeout 3600s;",
            "    proxy_send_timeout 3600s;",
        ]
        out = [f"location {prefix} {{", *proxy, "}"]
        for url, directory in route.static_paths:
            # ^~: no regex location may take these; the app never sees them.
            out += [
                f"location ^~ {url} {{",
                f"    alias {directory.rstrip('/')}/;",
                "    expires 1h;",
                "    try_files $uri =404;",
                "}",
            ]
        if prefix != "/":
            out += [f"location = {prefix.rstrip('/')} {{", *proxy, "}"]
    else:
        assert route.static_root is not None
        root = route.static_root.rstrip("/") or "/"
        if prefix == "/":
            out = [
                "location / {",
                f"    root {root};",
                "    try_files $uri $uri/ /index.html =404;",
                "}",
            ]
        else:
            alias = root if root.endswith("/") else root + "/"
            # try_files cannot check a fallback file under `alias` (a long-standing nginx
            # bug), so the single-page-app fallback goes through a named location.
            out = [
                f"location {prefix} {{",
                f"    alias {alias};",
                "    try_files $uri $uri/ @serverflow_index;",
                "}",
                "location @serverflow_index {",
                f"    root {root};",
                "    try_files /index.html =404;",
                "}",
                f"location = {prefix.rstrip('/')} {{",
                f"    return 301 {prefix};",
                "}",
            ]
    if prefix != "/":
        out += ["location / {", "    return 404;", "}"]
    return out


class Nginx:
    """The apps' nginx files in `settings.conf_dir`, changed one transaction at a time."""

    def __init__(self, settings: NginxSettings, webroot: Path, lock_timeout: float = 300.0) -> None:
        self.settings = settings
        self.webroot = webroot
        self.conf_dir = settings.conf_dir
        # A sibling, not a subdirectory: an `include conf_dir/*` would read a subdirectory.
        self.staging = settings.conf_dir.parent / f".{settings.conf_dir.name}.serverflow"
        self.journal = self.staging / "journal.json"
        self.lock_timeout = lock_timeout

    def path(self, app: str) -> Path:
        return self.conf_dir / f"{check_app(app)}.conf"

    def challenge_path(self, app: str) -> Path:
        return self.conf_dir / f"{check_app(app)}.challenge.conf"

    def apply(self, site: Site, timeout: float = 15.0) -> None:
        """Serve `site`: write, `nginx -t`, reload, wait for its release; else restore."""
        text = render(site, self.settings, self.webroot)
        route = checked(site.route)
        roots = [route.static_root] if route.static_root is not None else []
        for root_text in [*roots, *(directory for _, directory in route.static_paths)]:
            root = Path(root_text)
            if not root.is_dir():
                raise ProxyError(f"the static root {root} is not a directory")
            if (blocker := unreadable(root)) is not None:
                raise ProxyError(
                    f"nginx's workers cannot read the static root {root}: {blocker} is not "
                    "searchable by other users (chmod o+x, or keep releases elsewhere)"
                )
        with self._locked():
            self._refuse_taken(site.app, route.domains)
            if route.public_port is not None:
                self._refuse_port_taken(site.app, route.public_port)
            changes: dict[Path, str | None] = {
                self.conf_dir / f"{SHARED_NAME}.conf": SHARED_CONF,
                self.path(site.app): text,
                self.challenge_path(site.app): None,
            }

            def settle() -> None:
                for domain in route.domains:
                    self.wait_serving(site.app, domain, site.release, timeout)
                if route.public_port is not None:
                    self.wait_serving_port(site.app, route.public_port, site.release, timeout)

            self._commit(site.app, changes, route.domains, settle)

    def remove(self, app: str, timeout: float = 15.0) -> None:
        """Stop routing to `app`: delete its files, `nginx -t`, reload, wait until it is gone."""
        with self._locked():
            info = self.sites().get(app)

            def settle() -> None:
                if info is not None:
                    self._wait_gone(info, timeout)

            changes: dict[Path, str | None] = {self.path(app): None, self.challenge_path(app): None}
            self._commit(app, changes, [], settle)

    def serve_challenge(self, app: str, domains: list[str]) -> None:
        """Answer ACME challenges for `domains`, which no server block serves yet."""
        text = render_challenge(app, domains, self.settings, self.webroot)
        with self._locked():
            self._refuse_taken(app, domains)
            self._commit(app, {self.challenge_path(app): text}, check_domains(domains), None)

    def drop_challenge(self, app: str) -> None:
        with self._locked():
            self._commit(app, {self.challenge_path(app): None}, [], None)

    def reload(self, settle: Callable[[], None] | None = None) -> None:
        """Validate and reload unchanged files (new certificates); `settle` checks the result."""
        with self._locked():
            self._test([])
            self._reload()
            if settle is not None:
                settle()

    def check_challenge(self, domains: list[str], timeout: float = 15.0) -> None:
        """Fetch a file put in the ACME webroot through nginx for each domain, as the CA will.

        A CA counts failed validations against its rate limits, so a webroot nginx cannot
        serve (unreadable by its workers, a domain routed elsewhere) is caught here first.
        """
        challenges = self.webroot / ".well-known" / "acme-challenge"
        self.webroot.mkdir(mode=0o755, parents=True, exist_ok=True)
        for path in (self.webroot / ".well-known", challenges):
            path.mkdir(mode=0o755, exist_ok=True)
        token = f"serverflow-check-{secrets.token_urlsafe(12)}"
        (challenges / token).write_text(token)
        (challenges / token).chmod(0o644)
        try:
            for domain in check_domains(domains):
                last = self.wait_until(
                    domain,
                    f"/.well-known/acme-challenge/{token}",
                    False,
                    lambda a: a is not None and a.status == 200 and a.body == token.encode(),
                    timeout,
                    method="GET",
                )
                if last is not None:
                    blocker = unreadable(challenges)
                    raise CertificateError(
                        f"nginx does not serve the ACME webroot {self.webroot} for {domain} "
                        f"(last: {last}); its workers must be able to read it: every parent "
                        "directory needs o+x and the files o+r"
                        + (f" ({blocker} has no o+x)" if blocker else "")
                    )
        finally:
            (challenges / token).unlink(missing_ok=True)

    def sites(self) -> dict[str, SiteInfo]:
        """The apps ServerFlow routes, by app name (challenge files not included)."""
        found: dict[str, SiteInfo] = {}
        for info in self._infos():
            if info.kind == "site":
                found[info.app] = info
        return found

    def wait_serving(self, app: str, domain: str, release: str, timeout: float) -> None:
        """Poll nginx until `domain` answers with `release`'s header, or raise ProxyError."""
        info = self.sites().get(app)
        path, tls = (info.path, info.tls) if info else ("/", False)
        last = self.wait_until(
            domain,
            path,
            tls,
            lambda answer: answer is not None and answer.release == release,
            timeout,
        )
        if last is not None:
            raise ProxyError(
                f"nginx did not serve release {release} of app {app} at "
                f"{self._url(domain, path, tls)} within {timeout:g}s (last: {last}); {RELOAD_HINT}"
            )

    def wait_serving_port(self, app: str, port: int, release: str, timeout: float) -> None:
        """Poll nginx until its `port` answers with `release`'s header, or raise ProxyError."""
        info = self.sites().get(app)
        path = info.path if info else "/"
        last = self.wait_until(
            PORT_HOST,
            path,
            False,
            lambda answer: answer is not None and answer.release == release,
            timeout,
            port=port,
        )
        if last is not None:
            raise ProxyError(
                f"nginx did not serve release {release} of app {app} on its port {port} "
                f"within {timeout:g}s (last: {last}); {RELOAD_HINT}"
            )

    def wait_until(
        self,
        domain: str,
        path: str,
        tls: bool,
        done: Callable[[Answer | None], bool],
        timeout: float,
        method: str = "HEAD",
        port: int | None = None,
    ) -> str | None:
        """Probe `domain` (on `port`, else the HTTP or HTTPS one) until `done(answer)` holds
        steadily: None, or the last answer seen."""
        if port is None:
            port = self.settings.https_port if tls else self.settings.http_port
        deadline = time.monotonic() + timeout
        last = "no answer"
        # Right after a reload the old workers still accept connections for a moment:
        # one good answer is not enough, a short run of them (fresh connections) is.
        streak: list[float] = []
        while True:
            answer: Answer | None
            try:
                answer = probe(port, domain, path, tls=tls, method=method)
                last = f"HTTP {answer.status} with release {answer.release or 'none'}"
            except OSError as exc:
                answer, last = None, f"no answer ({exc})"
            if done(answer):
                streak.append(time.monotonic())
                if len(streak) >= STEADY_PROBES and streak[-1] - streak[0] >= STEADY_SECONDS:
                    return None
                time.sleep(0.01)
                continue
            streak.clear()
            if time.monotonic() >= deadline:
                return last
            time.sleep(0.05)

    def _wait_gone(self, info: SiteInfo, timeout: float) -> None:
        if info.public_port is not None:
            last = self.wait_until(
                PORT_HOST,
                info.path,
                False,
                lambda answer: answer is None or answer.release != info.release,
                timeout,
                port=info.public_port,
            )
            if last is not None:
                raise ProxyError(
                    f"nginx still serves release {info.release} of the removed app {info.app} "
                    f"on port {info.public_port} after {timeout:g}s; " + RELOAD_HINT
                )
        for domain in info.domains:
            last = self.wait_until(
                domain,
                info.path,
                info.tls,
                lambda answer: answer is None or answer.release != info.release,
                timeout,
            )
            if last is not None:
                raise ProxyError(
                    f"nginx still serves release {info.release} of the removed app {info.app} "
                    f"at {self._url(domain, info.path, info.tls)} after {timeout:g}s; "
                    + RELOAD_HINT
                )

    def _url(self, domain: str, path: str, tls: bool) -> str:
        if tls:
            return f"https://{domain}:{self.settings.https_port}{path}"
        return f"http://{domain}:{self.settings.http_port}{path}"

    # -- the transaction -------------------------------------------------------------

    def _commit(
        self,
        app: str,
        changes: dict[Path, str | None],
        domains: list[str],
        settle: Callable[[], None] | None,
    ) -> None:
        previous = {path: _read(path) for path in changes}
        changed = any(previous[path] != text for path, text in changes.items())
        if not changed:
            if settle is None:
                return
            try:
                settle()
                return
            except ProxyError:
                pass  # the files say so but nginx does not serve it: reload below
        if changed:
            # Written first: if the agent dies mid-change, the next change puts these back.
            self._write({self.journal: json.dumps({str(p): t for p, t in previous.items()})})
            self._write(changes)
        reloading = False
        try:
            try:
                self._test(domains)
            except ProxyError as exc:
                raise ProxyError(f"nginx refused the configuration for app {app}: {exc}") from None
            reloading = True
            self._reload()
            if settle is not None:
                settle()
        except BaseException as exc:
            if not changed:
                raise
            self._write(previous)
            if reloading:
                with contextlib.suppress(ProxyError):
                    self._test([])
                    self._reload()
            self.journal.unlink(missing_ok=True)
            if isinstance(exc, ProxyError):
                raise ProxyError(f"{exc}; the previous configuration was put back") from None
            raise
        self.journal.unlink(missing_ok=True)

    def _recover(self) -> None:
        """Finish a change the agent died in the middle of: put its previous files back."""
        try:
            saved = json.loads(self.journal.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except ValueError:
            saved = {}  # torn while being written: no file had been touched yet
        files = {Path(p): t for p, t in saved.items() if Path(p).parent == self.conf_dir}
        self._write(files)
        with contextlib.suppress(ProxyError):
            self._test([])
            self._reload()
        self.journal.unlink(missing_ok=True)

    def _test(self, domains: list[str]) -> None:
        code, output = self._run(self.settings.test, "test")
        if code != 0:
            raise ProxyError(nginx_reason(output))
        # nginx only warns about a second server block for the same name and port, then
        # ignores it: for one of our domains that means the app would not be served.
        for name in re.findall(r'conflicting server name "([^"]+)"', output):
            if name.lower() in domains:
                raise ProxyError(
                    f"another nginx server block already uses the domain {name} on the same "
                    "port (outside ServerFlow's files?)"
                )

    def _reload(self) -> None:
        code, output = self._run(self.settings.reload, "reload")
        if code != 0:
            raise ProxyError(f"nginx could not be reloaded: {nginx_reason(output)}")

    def _run(self, argv: tuple[str, ...], what: str) -> tuple[int, str]:
        try:
            done = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise ProxyError(
                f"cannot run the nginx {what} command {argv[0]!r}: not found "
                f"(deploy.nginx.{what} in the agent's settings)"
            ) from None
        except subprocess.TimeoutExpired:
            raise ProxyError(
                f"the nginx {what} command did not finish within {COMMAND_TIMEOUT:g}s"
            ) from None
        return done.returncode, (done.stderr or "") + (done.stdout or "")

    def _write(self, files: dict[Path, str | None]) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(mode=0o700, exist_ok=True)
        for path, text in files.items():
            if text is None:
                path.unlink(missing_ok=True)
                continue
            tmp = self.staging / f"{path.name}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            tmp.chmod(0o644)
            os.replace(tmp, path)

    def _refuse_taken(self, app: str, domains: list[str]) -> None:
        for info in self._infos():
            if info.app == app:
                continue
            for domain in domains:
                if domain in info.domains:
                    raise ProxyError(
                        f"the domain {domain} is already routed to app {info.app}; "
                        "remove it there first"
                    )

    def _refuse_port_taken(self, app: str, port: int) -> None:
        if port in (self.settings.http_port, self.settings.https_port):
            raise ProxyError(
                f"port {port} is nginx's HTTP or HTTPS port: it cannot be the public port "
                f"of app {app} too"
            )
        mine = False
        for info in self._infos():
            if info.public_port != port:
                continue
            if info.app != app:
                raise ProxyError(
                    f"port {port} is already the public port of app {info.app}; "
                    "remove it there first"
                )
            mine = True
        from serverflow_agent.deploy.ports import in_use

        if not mine and in_use(port):
            raise ProxyError(
                f"port {port}, the public port of app {app}, is in use on this server by "
                "another program: nginx could not listen on it (stop that program, or keep "
                "the control plane's app port range free on the servers)"
            )

    def _infos(self) -> Iterator[SiteInfo]:
        if not self.conf_dir.is_dir():
            return
        for path in sorted(self.conf_dir.glob("*.conf")):
            info = _read_info(path)
            if info is not None:
                yield info

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time, across threads and processes (flock on a file)."""
        self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.staging / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ProxyError(
                            "another proxy change is still running after "
                            f"{self.lock_timeout:g}s; try again later"
                        ) from None
                    time.sleep(0.05)
            self._recover()
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def unreadable(path: Path) -> Path | None:
    """The first of `path` and its parents that other users cannot traverse, if any.

    nginx's workers run as an unprivileged user (www-data, nobody), not as the agent.
    """
    for part in [*reversed(path.parents), path]:
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return part
        except OSError:
            return part
    return None


def nginx_reason(output: str) -> str:
    """nginx's own complaint, bounded: its [emerg]/[alert]/[crit]/[error] lines, else the tail."""
    problems = re.findall(r"\[(?:emerg|alert|crit|error)\]\s+(?:\d+#\d+:\s+)?(.*)", output)
    lines = problems or [line for line in output.splitlines() if line.strip()][-5:]
    text = "; ".join(line.strip()[:300] for line in lines) or "no output"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _read_info(path: Path) -> SiteInfo | None:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except OSError:
        return None
    if not first.startswith(META_PREFIX):
        return None
    try:
        meta: dict[str, Any] = json.loads(first[len(META_PREFIX) :])
        return SiteInfo(
            app=str(meta["app"]),
            kind=str(meta["kind"]),
            release=meta.get("release"),
            domains=[str(d) for d in meta["domains"]],
            path=str(meta.get("path", "/")),
            tls=bool(meta.get("tls", False)),
            public_port=_int_or_none(meta.get("public_port")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

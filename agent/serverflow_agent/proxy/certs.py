"""TLS certificates over ACME HTTP-01: certbot in webroot mode, installed for nginx.

certbot keeps its own state under `acme.config_dir` (config/, work/, logs/). What nginx
reads is our copy under `nginx.certs_dir`: `<name>` is a symlink to a directory holding
`fullchain.pem` and `privkey.pem`, switched in one rename so nginx never sees a new
certificate with an old key. `<name>` is the first domain. A certificate is reused while
it covers the domains and has more than `acme.renew_days` left.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from serverflow_agent.deploy.settings import AcmeSettings, NginxSettings
from serverflow_agent.proxy.errors import CertificateError
from serverflow_agent.proxy.routes import check_domains

CERTBOT_TIMEOUT = 300.0
ARCHIVE = ".archive"


@dataclass(frozen=True)
class CertificateInfo:
    name: str
    cert: Path
    key: Path
    domains: list[str]
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> float:
        return (self.not_after - (now or datetime.now(UTC))) / timedelta(days=1)


@dataclass
class RenewalReport:
    renewed: list[str] = field(default_factory=list)  # certificate names
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason


class Certificates:
    """Obtain, reuse and renew certificates; see the module docstring for the layout."""

    def __init__(self, acme: AcmeSettings, nginx: NginxSettings) -> None:
        self.acme = acme
        self.dir = nginx.certs_dir

    def ensure(self, domains: Sequence[str]) -> tuple[Path, Path]:
        """(fullchain, key) covering `domains`: the installed one if still good, else new."""
        names = check_domains(list(domains))
        with self._locked():
            current = self.existing(names)
            if current is not None:
                return current.cert, current.key
            # certbot may still hold a good one (our copy was lost): issuing again would
            # spend the CA's duplicate-certificate rate limit.
            live = self.acme.config_dir / "config" / "live" / names[0]
            if self._good(live / "fullchain.pem", names) and (live / "privkey.pem").is_file():
                return self._install(names[0], live / "fullchain.pem", live / "privkey.pem")
            return self._issue(names)

    def existing(self, domains: Sequence[str]) -> CertificateInfo | None:
        """The installed certificate for `domains` if it covers them with time to spare."""
        names = check_domains(list(domains))
        info = self.info(names[0])
        if info is None or not set(names) <= set(info.domains):
            return None
        return info if info.days_left() > self.acme.renew_days else None

    def _good(self, cert: Path, names: list[str]) -> bool:
        if not cert.is_file():
            return False
        try:
            covered, not_after = read_certificate(cert)
        except CertificateError:
            return False
        days_left = (not_after - datetime.now(UTC)) / timedelta(days=1)
        return set(names) <= set(covered) and days_left > self.acme.renew_days

    def paths(self, name: str) -> tuple[Path, Path]:
        """Where the certificate called `name` is (or will be) installed: (fullchain, key)."""
        return self.dir / name / "fullchain.pem", self.dir / name / "privkey.pem"

    def info(self, name: str) -> CertificateInfo | None:
        """The installed certificate called `name` (its first domain), if any."""
        cert, key = self.paths(name)
        if not cert.is_file() or not key.is_file():
            return None
        domains, not_after = read_certificate(cert)
        return CertificateInfo(name, cert, key, domains, not_after)

    def installed(self) -> list[CertificateInfo]:
        if not self.dir.is_dir():
            return []
        found = []
        for entry in sorted(self.dir.iterdir()):
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(CertificateError):
                info = self.info(entry.name)
                if info is not None:
                    found.append(info)
        return found

    def renew_due(self, names: Collection[str] | None = None) -> RenewalReport:
        """Renew the installed certificates (or those of `names`) with `renew_days` or less left."""
        report = RenewalReport()
        for info in self.installed():
            if info.days_left() > self.acme.renew_days:
                continue
            if names is not None and info.name not in names:
                continue
            domains = [info.name, *(d for d in info.domains if d != info.name)]
            try:
                with self._locked():
                    self._issue(domains)
            except CertificateError as exc:
                report.failed[info.name] = str(exc)
            else:
                report.renewed.append(info.name)
        return report

    # -- certbot ---------------------------------------------------------------------

    def _issue(self, domains: list[str]) -> tuple[Path, Path]:
        name = domains[0]
        base = self.acme.config_dir
        self.acme.webroot.mkdir(mode=0o755, parents=True, exist_ok=True)
        argv = [
            self.acme.certbot,
            "certonly",
            "--webroot",
            "-w",
            str(self.acme.webroot),
            "--server",
            self.acme.directory_url,
            "--config-dir",
            str(base / "config"),
            "--work-dir",
            str(base / "work"),
            "--logs-dir",
            str(base / "logs"),
            "--non-interactive",
            "--agree-tos",
            "--no-random-sleep-on-renew",
            # We decided it is time (renew_days is ours, not certbot's 30 days).
            "--force-renewal",
            "--cert-name",
            name,
        ]
        if self.acme.email:
            argv += ["-m", self.acme.email, "--no-eff-email"]
        else:
            argv.append("--register-unsafely-without-email")
        for domain in domains:
            argv += ["-d", domain]
        env = dict(os.environ)
        if self.acme.ca_bundle:
            env["REQUESTS_CA_BUNDLE"] = self.acme.ca_bundle
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=CERTBOT_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise CertificateError(
                f"cannot run certbot ({self.acme.certbot!r} not found; install certbot or set "
                "deploy.acme.certbot)"
            ) from None
        except subprocess.TimeoutExpired:
            raise CertificateError(
                f"certbot did not finish within {CERTBOT_TIMEOUT:g}s for {', '.join(domains)}"
            ) from None
        if done.returncode != 0:
            raise CertificateError(
                f"certbot could not obtain a certificate for {', '.join(domains)} from "
                f"{self.acme.directory_url}: {_tail(done.stderr or done.stdout)}"
            )
        live = base / "config" / "live" / name
        return self._install(name, live / "fullchain.pem", live / "privkey.pem")

    def _install(self, name: str, fullchain: Path, privkey: Path) -> tuple[Path, Path]:
        archive = self.dir / ARCHIVE
        archive.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = archive / f"{name}.{time.time_ns()}"
        target.mkdir(mode=0o755)
        try:
            shutil.copyfile(fullchain, target / "fullchain.pem")
            (target / "fullchain.pem").chmod(0o644)
            fd = os.open(target / "privkey.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(privkey.read_bytes())
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise CertificateError(f"could not install the certificate {name}: {exc}") from None
        link = self.dir / name
        tmp = self.dir / f".{name}.{os.getpid()}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(ARCHIVE) / target.name)
        os.replace(tmp, link)
        self._prune(name, keep=target.name)
        return self.paths(name)

    def _prune(self, name: str, keep: str) -> None:
        """Keep the installed copy and the one before it (nginx may still be on it)."""
        stamps = []
        for path in (self.dir / ARCHIVE).iterdir():
            stem, _, stamp = path.name.rpartition(".")
            if stem == name and stamp.isdigit() and path.name != keep:
                stamps.append((int(stamp), path))
        for _, path in sorted(stamps)[:-1]:
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """certbot refuses to run twice at once; we queue instead."""
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def read_certificate(path: Path) -> tuple[list[str], datetime]:
    """(DNS names, expiry) of the first certificate in a PEM file, read with openssl."""
    try:
        done = subprocess.run(
            ["openssl", "x509", "-noout", "-enddate", "-ext", "subjectAltName", "-in", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise CertificateError(f"cannot read {path} with openssl: {exc}") from None
    end = re.search(r"notAfter=(.+)", done.stdout)
    if done.returncode != 0 or end is None:
        raise CertificateError(f"cannot read the certificate {path}: {_tail(done.stderr)}")
    not_after = datetime.fromtimestamp(ssl.cert_time_to_seconds(end.group(1).strip()), UTC)
    domains = [d.lower() for d in re.findall(r"DNS:([^,\s]+)", done.stdout)]
    return domains, not_after


def leaf_der(path: Path) -> bytes:
    """DER of the first certificate in a PEM file (the leaf of a full chain)."""
    found = re.search(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", path.read_text(), re.S
    )
    if found is None:
        raise CertificateError(f"no certificate in {path}")
    return ssl.PEM_cert_to_DER_cert(found.group(0))


def _tail(output: str, lines: int = 6) -> str:
    kept = [line.strip() for line in (output or "").splitlines() if line.strip()]
    text = " | ".join(kept[-lines:]) or "no output"
    return text if len(text) <= 1500 else "..." + text[-1497:]

"""pebble, Let's Encrypt's test CA, on free ports with its own listener certificate, and
PowerDNS as its resolver when challenges are really validated.

pebble keeps accounts in memory and makes a new root at each start, so every pebble gets
a fresh certbot config directory (`acme_section`).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from serverflow_testkit import free_port, missing, stop_process, wait_listening


@dataclass
class PebbleServer:
    dir: Path
    port: int
    management_port: int
    ca_bundle: Path  # trusts pebble's own listener (not the certificates it issues)
    process: subprocess.Popen[bytes]
    address: str = "127.0.0.1"

    @property
    def directory_url(self) -> str:
        return f"https://{self.address}:{self.port}/dir"

    def root(self) -> Path:
        """pebble's issuing root (PEM), saved to a file for `--cacert` / ssl contexts."""
        path = self.dir / "issuing-root.pem"
        if not path.exists():
            answer = httpx.get(
                f"https://{self.address}:{self.management_port}/roots/0",
                verify=ssl.create_default_context(cafile=str(self.ca_bundle)),
                timeout=10,
            )
            answer.raise_for_status()
            path.write_text(answer.text)
        return path

    def acme_section(self, base: Path, webroot: Path) -> dict[str, object]:
        """The `deploy.acme` section of agent.json: this CA, a certbot dir of its own."""
        if shutil.which("certbot") is None:
            missing("certbot", "the certbot binary is not installed (apt-get install certbot)")
        config = base / f"certbot-{self.port}"
        config.mkdir(parents=True, exist_ok=True)
        return {
            "directory_url": self.directory_url,
            "webroot": str(webroot),
            "config_dir": str(config),
            "ca_bundle": str(self.ca_bundle),
        }

    def stop(self) -> None:
        stop_process(self.process)


def start_pebble(
    directory: Path,
    http_port: int | None = None,
    dns_port: int | None = None,
    address: str = "127.0.0.1",
) -> PebbleServer:
    """pebble in `directory`, listening on `address`. By default every challenge is valid
    without a look; with `dns_port` (see `start_resolver`) pebble really validates HTTP-01
    on `http_port`."""
    if shutil.which("pebble") is None:
        missing("pebble", "the pebble binary is not installed (apt-get install pebble)")
    if shutil.which("openssl") is None:
        missing("openssl", "the openssl binary is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    names = "DNS:localhost,IP:127.0.0.1" + ("" if address == "127.0.0.1" else f",IP:{address}")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/CN=localhost", "-addext", f"subjectAltName={names}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port, management = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"{address}:{port}",
            "managementListenAddress": f"{address}:{management}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port or free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (directory / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    argv = ["pebble", "-config", str(directory / "pebble.json")]
    if dns_port is None:
        env["PEBBLE_VA_ALWAYS_VALID"] = "1"
    else:
        argv += ["-dnsserver", f"127.0.0.1:{dns_port}"]
    with open(directory / "pebble.log", "wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PebbleServer(directory, port, management, cert, process, address)
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            output = (directory / "pebble.log").read_text(errors="replace")
            missing("pebble", f"it exited at start: {output[-500:]}")
        try:
            if httpx.get(server.directory_url, verify=trust, timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            missing("pebble", f"{server.directory_url} did not answer within 20 s")
        time.sleep(0.05)


@dataclass
class Resolver:
    """PowerDNS answering 127.0.0.1 for every name under `zone`, for pebble to look up."""

    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)


def start_resolver(directory: Path, zone: str = "test") -> Resolver:
    """pdns_server with a gsqlite3 zone holding `*.<zone> A 127.0.0.1` (TESTING.md recipe)."""
    schema = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")
    for binary in ("pdns_server", "pdnsutil", "sqlite3"):
        if shutil.which(binary) is None:
            missing("PowerDNS", f"{binary} is not installed (pdns-server pdns-backend-sqlite3)")
    if not schema.exists():
        missing("PowerDNS", f"{schema} is missing (apt-get install pdns-backend-sqlite3)")
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "pdns.sqlite3"
    subprocess.run(
        ["sqlite3", str(database)], input=schema.read_bytes(), check=True, capture_output=True
    )
    port = free_port()
    (directory / "pdns.conf").write_text(
        "\n".join(
            [
                "launch=gsqlite3",
                f"gsqlite3-database={database}",
                "local-address=127.0.0.1",
                f"local-port={port}",
                f"socket-dir={directory}",
                "daemon=no",
                "guardian=no",
                "disable-syslog=yes",
                "security-poll-suffix=",
            ]
        )
        + "\n"
    )
    util = ["pdnsutil", f"--config-dir={directory}"]
    subprocess.run([*util, "create-zone", zone], check=True, capture_output=True, timeout=30)
    subprocess.run(
        [*util, "add-record", zone, "*", "A", "60", "127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with open(directory / "pdns.log", "wb") as log:
        process = subprocess.Popen(
            ["pdns_server", f"--config-dir={directory}"], stdout=log, stderr=subprocess.STDOUT
        )
    resolver = Resolver(port, process)
    wait_listening("PowerDNS", process, port, directory / "pdns.log")
    return resolver

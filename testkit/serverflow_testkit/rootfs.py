"""A fresh Debian 12 root filesystem, and a network namespace to run it in.

`debian_rootfs` debootstraps Debian 12 ("bookworm", minbase plus the packages asked for)
once per machine and keeps it as a tarball in `CACHE` (about 75 s the first time, then a
few seconds to unpack); `Sandbox` unpacks it, runs commands chrooted in it inside a
network namespace of its own (its own loopback: ports 80 and 443 of the host are not
touched, and nothing outside is reachable), and removes everything it started.

A chroot in a network and mount namespace, rather than a container: this machine has no
systemd and no container engine, and what an installer touches (users, /etc, /opt, apt's
database, nginx, ports 80/443) is what a fresh server has. PID 1 seen from inside is the
machine's own, which is not systemd: the installer must take its no-systemd path.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from serverflow_testkit import missing

CACHE = Path(os.environ.get("SERVERFLOW_TEST_CACHE", "/var/cache/serverflow-tests"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"


# debootstrap configures its --include packages without /proc, which some postinst
# scripts need (python3-cryptography's, for certbot): only these go in that way, the
# rest with apt-get inside the new root, /proc mounted and services kept from starting.
BASE = ("python3", "python3-venv", "ca-certificates", "curl", "openssl", "procps")


def debian_rootfs(packages: Sequence[str]) -> Path:
    """The cached tarball of a Debian 12 minbase root with `packages`, built if missing."""
    if os.geteuid() != 0:
        missing("debootstrap", "a root filesystem needs root (chroot, mounts, namespaces)")
    if shutil.which("debootstrap") is None:
        missing("debootstrap", "apt-get install debootstrap")
    key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(sorted(packages))}".encode()).hexdigest()
    tarball = CACHE / f"{SUITE}-{key[:12]}.tar"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, others wait and reuse it
        if tarball.exists():
            return tarball
        build = CACHE / f"build-{uuid.uuid4().hex[:8]}"
        log = CACHE / f"{tarball.stem}.log"
        try:
            with log.open("wb") as out:
                done = subprocess.run(
                    [
                        "debootstrap",
                        "--variant=minbase",
                        f"--include={','.join(BASE)}",
                        SUITE,
                        str(build),
                        MIRROR,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=900,
                )
                if done.returncode == 0:
                    policy = build / "usr/sbin/policy-rc.d"  # no service starts inside
                    policy.write_text("#!/bin/sh\nexit 101\n")
                    policy.chmod(0o755)
                    apt = (
                        f"mount -t proc proc {build}/proc && chroot {build} sh -c "
                        "'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get "
                        f"install -y -qq --no-install-recommends {' '.join(sorted(packages))} "
                        "&& apt-get clean'"
                    )
                    done = subprocess.run(
                        ["unshare", "--mount", "--propagation", "private", "sh", "-c", apt],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        timeout=900,
                    )
                    policy.unlink()
            if done.returncode != 0:
                missing("debootstrap", f"it failed: {log.read_text(errors='replace')[-800:]}")
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(build), "-cf", str(partial), "."], check=True)
            partial.replace(tarball)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return tarball


class Sandbox:
    """A root filesystem unpacked in `root`, used in the network namespace `netns`."""

    def __init__(self, tarball: Path, root: Path) -> None:
        self.root = root
        self.netns = f"sf-{uuid.uuid4().hex[:8]}"
        root.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.host(["ip", "link", "set", "lo", "up"], check=True)
        # One link to the host (a /30 of 10.201.0.0/16): the host is `gateway`, the
        # sandbox `address`; no route goes further.
        block = random.randrange(1, 16383)
        self.gateway = str(ipaddress.ip_address("10.201.0.0") + block * 4 + 1)
        self.address = str(ipaddress.ip_address("10.201.0.0") + block * 4 + 2)
        self.veth = f"sfh{self.netns[3:]}"
        subprocess.run(
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
             "netns", self.netns],
            check=True,
        )  # fmt: skip
        subprocess.run(["ip", "addr", "add", f"{self.gateway}/30", "dev", self.veth], check=True)
        subprocess.run(["ip", "link", "set", self.veth, "up"], check=True)
        self.host(["ip", "addr", "add", f"{self.address}/30", "dev", "eth0"], check=True)
        self.host(["ip", "link", "set", "eth0", "up"], check=True)
        # Names the sandbox resolves without DNS (there is no network to ask).
        (root / "etc" / "resolv.conf").write_text("")
        (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")

    def add_host(self, name: str, address: str = "127.0.0.1") -> None:
        with (self.root / "etc" / "hosts").open("a") as hosts:
            hosts.write(f"{address} {name}\n")

    def host(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a command of the host (not chrooted) inside the sandbox's network namespace."""
        return subprocess.run(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.netns, *argv], text=True, **kwargs
        )

    def popen_host(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.netns, *argv], **kwargs
        )

    def chroot(
        self,
        script: str,
        env: dict[str, str] | None = None,
        timeout: float = 900,
        network: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script as root inside the sandbox (own mounts of /proc and /dev); with
        `network`, in the host's network namespace instead (to download what the sandbox
        itself must not: it has no route out), with the host's resolver."""
        env = dict(env or {})
        if network:
            # The host's resolver and trust store (its egress may sit behind a proxy with
            # a CA of its own), for this command only.
            shutil.copy("/etc/ssl/certs/ca-certificates.crt", self.root / "tmp" / "host-ca.pem")
            for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
                env.setdefault(name, "/tmp/host-ca.pem")
        inner = (
            f"mount -t proc proc {self.root}/proc && mount --rbind /dev {self.root}/dev && "
            f"exec chroot {self.root} /usr/bin/env -i {_env(env)} /bin/bash -euo pipefail -c "
            + _quote(script)
        )
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
        if not network:
            return self.host(argv, capture_output=True, timeout=timeout)
        resolv = self.root / "etc" / "resolv.conf"
        resolv.write_text(Path("/etc/resolv.conf").read_text())
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        finally:
            resolv.write_text("")
            (self.root / "tmp" / "host-ca.pem").unlink()

    def pids(self) -> list[int]:
        listed = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True
        ).stdout
        return [int(p) for p in listed.split()]

    def close(self) -> None:
        """Stop every process in the namespace (by PID), remove it and the root."""
        deadline = time.monotonic() + 10
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            deadline = time.monotonic() + 5
        subprocess.run(["ip", "netns", "delete", self.netns], check=False)
        subprocess.run(["ip", "link", "delete", self.veth], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _env(extra: dict[str, str] | None) -> str:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        **(extra or {}),
    }
    return " ".join(_quote(f"{k}={v}") for k, v in env.items())

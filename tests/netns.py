"""A small internet in network namespaces, for NAT tests (root only; `make install` puts iproute2
and iptables on the machine).

    wan (router of the "internet", 10.99.0.0/16)
     ├── pub        10.99.0.2       a public host
     ├── ra  10.99.1.2 ── ha 192.168.1.2     home A: router ra masquerades, drops unsolicited inbound
     └── rb  10.99.2.2 ── hb 192.168.2.2     home B: the same

Namespaces are named ``<prefix>-<name>`` so that two runs never collide, and :meth:`Internet.remove`
deletes them all (their veths go with them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

HOMES = {"a": 1, "b": 2}


def can_build() -> str | None:
    """Why this machine cannot build the namespaces (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (make install adds them)" if missing else None


def _run(*args: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Internet:
    prefix: str = field(default_factory=lambda: "in" + uuid.uuid4().hex[:6])
    made: list[str] = field(default_factory=list)
    linked: str | None = None  # this namespace's end of the link to the wan (join_from_here)

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def exec(self, name: str) -> tuple[str, ...]:
        """The command prefix that runs a program in namespace ``name``."""
        return ("ip", "netns", "exec", self.ns(name))

    def ip(self, name: str, *args: str) -> None:
        _run("ip", "-n", self.ns(name), *args)

    def _namespace(self, name: str) -> None:
        _run("ip", "netns", "add", self.ns(name))
        self.made.append(name)
        self.ip(name, "link", "set", "lo", "up")

    def _link(self, a: str, a_addr: str, b: str, b_addr: str) -> tuple[str, str]:
        """A veth pair between namespaces ``a`` and ``b`` with these /24 addresses."""
        ia, ib = f"{self.prefix}{a}{b}"[:15], f"{self.prefix}{b}{a}"[:15]
        _run("ip", "link", "add", ia, "netns", self.ns(a), "type", "veth", "peer", "name", ib, "netns", self.ns(b))
        for name, iface, addr in ((a, ia, a_addr), (b, ib, b_addr)):
            self.ip(name, "addr", "add", f"{addr}/24", "dev", iface)
            self.ip(name, "link", "set", iface, "up")
        return ia, ib

    def join_from_here(self) -> str:
        """Link this machine's own namespace to the wan (10.99.254.1, routes to 10.99.0.0/16), so that
        a service here (the chain) serves every namespace; its address.  :meth:`remove` unlinks it."""
        here, there = f"{self.prefix}h0", f"{self.prefix}w0"
        _run("ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", self.ns("wan"))
        self.linked = here
        _run("ip", "addr", "add", "10.99.254.1/24", "dev", here)
        _run("ip", "link", "set", here, "up")
        self.ip("wan", "addr", "add", "10.99.254.2/24", "dev", there)
        self.ip("wan", "link", "set", there, "up")
        _run("ip", "route", "add", "10.99.0.0/16", "via", "10.99.254.2")
        return "10.99.254.1"

    def build(self) -> Internet:
        for name in ("wan", "pub", *(f"r{h}" for h in HOMES), *(f"h{h}" for h in HOMES)):
            self._namespace(name)
        _run(*self.exec("wan"), "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._link("wan", "10.99.0.1", "pub", "10.99.0.2")
        self.ip("pub", "route", "add", "default", "via", "10.99.0.1")
        for home, n in HOMES.items():
            router, host = f"r{home}", f"h{home}"
            _, wan_side = self._link("wan", f"10.99.{n}.1", router, f"10.99.{n}.2")
            self._link(router, f"192.168.{n}.1", host, f"192.168.{n}.2")
            self.ip(router, "route", "add", "default", "via", f"10.99.{n}.1")
            self.ip(host, "route", "add", "default", "via", f"192.168.{n}.1")
            nat = self.exec(router)
            _run(*nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            _run(*nat, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan_side, "-j", "MASQUERADE")
            _run(*nat, "iptables", "-A", "FORWARD", "-i", wan_side, "-m", "conntrack", "--ctstate",
                 "ESTABLISHED,RELATED", "-j", "ACCEPT")
            _run(*nat, "iptables", "-A", "FORWARD", "-i", wan_side, "-j", "DROP")
            # Unsolicited packets to the router itself are dropped too, as a home router's firewall
            # does (else its kernel answers a SYN to an unmapped port with a RST).
            _run(*nat, "iptables", "-A", "INPUT", "-i", wan_side, "-m", "conntrack", "--ctstate",
                 "ESTABLISHED,RELATED", "-j", "ACCEPT")
            _run(*nat, "iptables", "-A", "INPUT", "-i", wan_side, "-j", "DROP")
        return self

    def address(self, name: str) -> str:
        """The address a host listens on: pub's public one, or a home host's private one."""
        return {"pub": "10.99.0.2", **{f"h{h}": f"192.168.{n}.2" for h, n in HOMES.items()}}[name]

    def remove(self) -> None:
        if self.linked:
            subprocess.run(["ip", "link", "del", self.linked], capture_output=True)  # its route goes with it
            self.linked = None
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", self.ns(name)], capture_output=True)
        self.made.clear()

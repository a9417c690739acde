"""A throw-away certificate authority for TLS tests, made with the `openssl` command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {res.stderr.decode(errors='replace')}")


# a new unencrypted EC P-256 key (with `-keyout`): `openssl req`'s arguments for it
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass
class Pair:
    cert: Path
    key: Path


class TestCA:
    """A CA in `directory/name`: `.pem` is its certificate; `issue()` signs server and client
    certificates (EC P-256, valid two days)."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.dir = directory / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pem = self.dir / "ca.pem"
        self.key = self.dir / "ca.key"
        _openssl(
            "req",
            "-x509",
            *NEW_KEY,
            "-keyout",
            str(self.key),
            "-out",
            str(self.pem),
            "-days",
            "2",
            "-subj",
            f"/CN=vmworker test {name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.dir,
        )

    def issue(self, cn: str, *, server: bool = False, names: tuple[str, ...] = ()) -> Pair:
        """A certificate for `cn`: a server's (SANs `names`) or a client's."""
        stem = self.dir / cn
        key, csr, pem, ext = (stem.with_suffix(s) for s in (".key", ".csr", ".pem", ".ext"))
        lines = [
            "basicConstraints=CA:FALSE",
            f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
        ]
        if names:
            lines.append(
                "subjectAltName="
                + ",".join(f"IP:{n}" if n.replace(".", "").isdigit() else f"DNS:{n}" for n in names)
            )
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req",
            *NEW_KEY,
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={cn}",
            cwd=self.dir,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(self.pem),
            "-CAkey",
            str(self.key),
            "-CAcreateserial",
            "-out",
            str(pem),
            "-days",
            "2",
            "-extfile",
            str(ext),
            cwd=self.dir,
        )
        key.chmod(0o600)
        return Pair(pem, key)

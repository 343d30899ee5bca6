"""The node home: keys, configuration and database of one participant.

Layout (all key files mode 0600, never overwritten)::

    <home>/config.toml   settings with documented defaults
    <home>/node.key      Ed25519 node key: libp2p identity, signs results and adverts
    <home>/client.key    Ed25519 client key: signs the jobs this participant submits
    <home>/eth.json      Ethereum keystore (passphrase from INFERAD_PASSPHRASE)
    <home>/db/           LevelDB
    <home>/node.json     written by a running node: peer id, addresses, pid
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from inferad.config import TEMPLATE, Config, load_config
from inferad.files import write_json

KEY_PREFIX = "ed25519:"
HOME_FILES = ("config.toml", "node.key", "client.key", "eth.json")


class HomeError(Exception):
    """The home directory cannot be used; the message says why and what to do."""


def default_home() -> Path:
    return Path(os.environ.get("INFERAD_HOME") or Path.home() / ".inferad")


class Home:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = (Path(path).expanduser() if path else default_home()).absolute()

    config_path = property(lambda self: self.path / "config.toml")
    node_key_path = property(lambda self: self.path / "node.key")
    client_key_path = property(lambda self: self.path / "client.key")
    eth_keystore_path = property(lambda self: self.path / "eth.json")
    db_path = property(lambda self: self.path / "db")
    node_info_path = property(lambda self: self.path / "node.json")

    def write_node_info(self, info: dict) -> None:
        """Write ``node.json`` (how CLI commands find the running node) atomically."""
        write_json(self.node_info_path, info, indent=2)

    def __repr__(self) -> str:
        return f"Home({str(self.path)!r})"

    # ------------------------------------------------------------------ creation

    def ensure(self) -> list[Path]:
        """Create whatever is missing; return the files created (none if complete)."""
        self._check_usable()
        created = []
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.config_path.exists():
            self.config_path.write_text(TEMPLATE)
            created.append(self.config_path)
        for path in (self.node_key_path, self.client_key_path):
            if not path.exists():
                _write_private(path, (KEY_PREFIX + SigningKey.generate().encode().hex() + "\n").encode())
                created.append(path)
        if not self.eth_keystore_path.exists():
            _write_private(self.eth_keystore_path, json.dumps(_new_eth_keystore()).encode())
            created.append(self.eth_keystore_path)
        return created

    def _check_usable(self) -> None:
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise HomeError(f"{self.path} exists and is not a directory; pass another --home")
        try:
            entries = {p.name for p in self.path.iterdir()}
        except OSError as exc:
            raise HomeError(f"cannot read home {self.path}: {exc.strerror}") from None
        if entries and not entries & set(HOME_FILES):
            raise HomeError(
                f"{self.path} is not empty and holds no inferad files (config.toml, node.key…); "
                "refusing to use a foreign directory as a home: pass an empty or new --home"
            )

    # ------------------------------------------------------------------ reading

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    @property
    def node_key(self) -> SigningKey:
        return _read_key(self.node_key_path)

    @property
    def client_key(self) -> SigningKey:
        return _read_key(self.client_key_path)

    @property
    def eth_address(self) -> str:
        """The EIP-55 checksummed address of the keystore (read without decrypting it).

        The checksum needs keccak, whose import costs ``inferad submit`` 0.1 s, so it is
        computed once and kept in ``<home>/eth.address`` (public, like the address itself);
        the keystore's own (lowercase) address stays the authority the cache must match.
        """
        try:
            address = json.loads(_read_private(self.eth_keystore_path))["address"].lower().removeprefix("0x")
            int(address, 16)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise HomeError(f"{self.eth_keystore_path} is not an Ethereum keystore") from None
        cache = self.path / "eth.address"
        try:
            cached = cache.read_text().strip()
        except FileNotFoundError:
            cached = ""
        if cached[2:].lower() == address:
            return cached
        from eth_hash.auto import keccak

        digest = keccak(address.encode()).hex()
        checksummed = "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(address, digest,
                                                                                        strict=False))
        cache.write_text(checksummed + "\n")
        return checksummed

    def eth_account(self):  # -> eth_account.signers.local.LocalAccount
        """Decrypt the Ethereum key with INFERAD_PASSPHRASE (empty on a devnet)."""
        from chain.ethereum import Account

        data = json.loads(_read_private(self.eth_keystore_path))
        try:
            key = Account.decrypt(data, os.environ.get("INFERAD_PASSPHRASE", ""))
        except ValueError:
            raise HomeError(
                f"cannot decrypt {self.eth_keystore_path}: wrong INFERAD_PASSPHRASE"
            ) from None
        return Account.from_key(key)


def _new_eth_keystore() -> dict:
    from chain.ethereum import Account

    account = Account.create()
    # pbkdf2 with 2^18 rounds: a quarter second, where scrypt's default needs 256 MiB.
    return Account.encrypt(account.key, os.environ.get("INFERAD_PASSPHRASE", ""),
                           kdf="pbkdf2", iterations=1 << 18)


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 atomically; never replaces an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_private(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise HomeError(
                f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod 600 {path}`"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise HomeError(f"{path} is missing; run `inferad init --home {path.parent}`") from None
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {exc.strerror}") from None


def _read_key(path: Path) -> SigningKey:
    raw = _read_private(path).decode(errors="replace").strip()
    try:
        if not raw.startswith(KEY_PREFIX):
            raise ValueError
        return SigningKey(bytes.fromhex(raw[len(KEY_PREFIX):]))
    except ValueError:
        raise HomeError(f"{path} is not an inferad key file (expected 'ed25519:<64 hex>')") from None

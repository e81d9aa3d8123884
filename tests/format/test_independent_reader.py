"""docs/format.md is enough to read a repository: this reader was written from that
document alone. It imports no drkit (only cryptography, zstandard and blake3), opens
a recipient-mode repository with the identity file, lists its snapshots, and rebuilds
every file of the latest one, byte for byte. The repository is made by the real
``drkit`` command in a subprocess, so this file does not import drkit either."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import yaml
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# -- the reader (from docs/format.md only) ------------------------------------------


def aad(kind: bytes, name: bytes = b"") -> bytes:
    return b"drkit\x01" + kind + b"\x00" + name


def recipient_key(text: str) -> bytes:
    """A recipient string: 'drkit-recipient-v1:' + unpadded base64url of 32 bytes."""
    prefix = "drkit-recipient-v1:"
    assert text.startswith(prefix)
    body = text[len(prefix):]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert len(raw) == 32
    return raw


class DocReader:
    def __init__(self, root: Path, identity_file: Path) -> None:
        self.root = root
        ident = json.loads(identity_file.read_text())
        assert ident["type"] == "drkit-identity"
        self.private = X25519PrivateKey.from_private_bytes(base64.b64decode(ident["private"]))
        self.public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert recipient_key(ident["recipient"]) == self.public
        config = json.loads((root / "config").read_bytes())
        assert config["key_mode"] == "recipient"
        self.master = self._master_key()
        self.data_key = base64.b64decode(self.master["data_key"])
        self.id_key = base64.b64decode(self.master["id_key"])
        assert base64.b64decode(self.master["recipient"]) == self.public
        self.blobs = self._index()

    def open(self, envelope: bytes, associated: bytes) -> bytes:
        scheme = envelope[0]
        if scheme == 0x01:
            return AESGCM(self.data_key).decrypt(envelope[1:13], envelope[13:], associated)
        assert scheme == 0x02, scheme
        epk = envelope[1:33]
        shared = self.private.exchange(X25519PublicKey.from_public_bytes(epk))
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + self.public,
                   info=b"drkit recipient session key v1").derive(shared)
        return AESGCM(key).decrypt(envelope[33:45], envelope[45:], associated)

    def _master_key(self) -> dict[str, Any]:
        for slot_file in sorted((self.root / "keys").iterdir()):
            slot = json.loads(slot_file.read_bytes())
            if slot.get("kdf") == "x25519" and recipient_key(slot["recipient"]) == self.public:
                associated = aad(b"key", b"recipient-slot")
                if slot.get("version", 1) >= 2:  # v2: every other field of the slot, canonical JSON
                    rest = {k: v for k, v in slot.items() if k != "data"}
                    associated += b"\x00" + json.dumps(rest, sort_keys=True, separators=(",", ":"),
                                                       ensure_ascii=False).encode("utf-8")
                plain = self.open(base64.b64decode(slot["data"]), associated)
                return json.loads(plain)
        raise AssertionError("no x25519 slot for this identity")

    def _index(self) -> dict[bytes, tuple[str, int, int, int]]:
        out: dict[bytes, tuple[str, int, int, int]] = {}
        for f in (self.root / "index").iterdir():
            doc = json.loads(zstandard.ZstdDecompressor().decompress(self.open(f.read_bytes(), aad(b"index"))))
            for pack in doc["packs"]:
                for blob_type, hex_id, offset, length, _raw in pack["blobs"]:
                    out[bytes.fromhex(hex_id)] = (pack["id"], blob_type, offset, length)
        return out

    def blob(self, hex_id: str) -> bytes:
        chunk_id = bytes.fromhex(hex_id)
        pack, blob_type, offset, length = self.blobs[chunk_id]
        with open(self.root / "data" / pack[:2] / pack, "rb") as f:
            f.seek(offset)
            sealed = f.read(length)
        plain = self.open(sealed, aad(b"blob", bytes((blob_type,)) + chunk_id))
        data = plain[1:] if plain[0] == 0 else zstandard.ZstdDecompressor().decompress(plain[1:])
        assert blake3.blake3(data, key=self.id_key).digest() == chunk_id
        return data

    def snapshots(self) -> list[dict[str, Any]]:
        out = []
        for f in (self.root / "snapshots").iterdir():
            plain = self.open(f.read_bytes(), aad(b"snapshot", f.name.encode()))
            out.append(json.loads(zstandard.ZstdDecompressor().decompress(plain)))
        return sorted(out, key=lambda s: s["time"])

    def entries(self, snap: dict[str, Any]) -> list[dict[str, Any]]:
        text = b"".join(self.blob(t) for t in snap["tree"])
        return [json.loads(line) for line in text.split(b"\n") if line]

    @staticmethod
    def name(entry: dict[str, Any], key: str = "path") -> bytes:
        """A path (or symlink target) as bytes: *_b64 when present, else UTF-8."""
        if f"{key}_b64" in entry:
            return base64.b64decode(entry[f"{key}_b64"])
        return entry[key].encode("utf-8")


# -- the test ------------------------------------------------------------------------


def _drkit(config: Path, *args: str, env: dict[str, str]) -> str:
    res = subprocess.run([sys.executable, "-m", "drkit", "-c", str(config), *args], capture_output=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def test_a_reader_written_from_the_doc_alone_restores_a_recipient_mode_repository(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    files = {
        b"sub/small.txt": b"hello from the format doc\n",
        b"big.bin": os.urandom(1536 * 1024) + bytes(1024 * 1024),  # several chunks, some compressible
        "caf\u00e9.txt".encode(): b"utf-8 name\n",
        b"latin1-\xe9t\xe9.txt": b"a name that is not UTF-8\n",
    }
    for rel, content in files.items():
        with open(os.path.join(os.fsencode(data), rel), "wb") as f:
            f.write(content)
    os.symlink(b"latin1-\xe9t\xe9.txt", os.path.join(os.fsencode(data), b"link"))
    config = tmp_path / "drkit.yaml"
    config.write_text(yaml.safe_dump({"repository": {"url": str(tmp_path / "repo")},
                                      "sources": [{"name": "data", "type": "files", "paths": [str(data)]}]}))
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRKIT_") or k in ("DRKIT_STATE_DIR", "DRKIT_CACHE_DIR")}
    env["DRKIT_PASSWORD"] = "backup host passphrase"
    recipient = _drkit(config, "key", "generate-identity", "--output", str(tmp_path / "id.json"), env=env).strip()
    assert recipient.startswith("drkit-recipient-v1:")
    _drkit(config, "init", "--recipient", recipient, env=env)
    _drkit(config, "backup", env=env)

    reader = DocReader(tmp_path / "repo", tmp_path / "id.json")
    snaps = reader.snapshots()
    assert [s["source"] for s in snaps] == ["data"]
    entries = reader.entries(snaps[-1])
    prefix = os.fsencode(data) + b"/"
    got = {}
    for e in entries:
        path = reader.name(e)
        if e["type"] == "file" and path.startswith(prefix):
            got[path[len(prefix):]] = b"".join(reader.blob(c) for c in e.get("chunks", []))
            assert len(got[path[len(prefix):]]) == e.get("size", 0)
    assert got == files
    link = next(e for e in entries if reader.name(e) == prefix + b"link")
    assert link["type"] == "symlink" and reader.name(link, "target") == b"latin1-\xe9t\xe9.txt"
    # every tree line is plain JSON any parser accepts: no lone surrogates
    for e in entries:
        json.dumps(e, ensure_ascii=False).encode("utf-8")

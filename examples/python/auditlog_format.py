"""What a client needs to check auditlog's receipts itself, written from
docs/FORMAT.md alone: the canonical entry encoding (section 2.1), the payload
commitment (2.2), leaf hashes (2.3), RFC 9162 proofs with BLAKE3 (3), and
C2SP signed notes and checkpoints with Ed25519 (4, 5)."""

import base64
import hashlib
import re
import struct
from dataclasses import dataclass

from blake3 import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def encode_entry(e) -> bytes:
    """Section 2.1, version 1, from an auditlog.v1.Entry message."""
    keys = sorted(e.attributes.keys(), key=lambda k: k.encode("utf-8"))
    out = [
        b"auditlog/entry",
        b"\x01",
        _str(e.origin),
        struct.pack(">Q", e.seq),
        struct.pack(">q", e.timestamp_unix_nanos),
        _str(e.subject),
        _str(e.actor),
        _str(e.kind),
        _str(e.content_type),
        struct.pack(">H", len(keys)),
    ]
    for k in keys:
        out += [_str(k), _str(e.attributes[k])]
    out += [
        _str(e.idempotency_key),
        struct.pack(">Q", e.payload_length),
        bytes(e.payload_digest),
        bytes(e.prev_leaf_hash),
    ]
    return b"".join(out)


def commitment(salt: bytes, payload: bytes) -> bytes:
    """Section 2.2."""
    return blake3(salt + payload).digest()


def leaf_hash(encoding: bytes) -> bytes:
    """Section 2.3."""
    return blake3(b"\x00" + encoding).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return blake3(b"\x01" + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, proof, root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2, with BLAKE3."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != 32 or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, proof, first_root: bytes, second_root: bytes) -> bool:
    """RFC 9162 section 2.1.4.2, with BLAKE3 (0 < first <= second)."""
    if first == 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if not proof or any(len(p) != 32 for p in proof):
        return False
    path = [first_root, *proof] if first & (first - 1) == 0 else list(proof)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


@dataclass
class VerifierKey:
    """Section 4: name+hex8(key id)+base64(0x01 || key)."""

    name: str
    key_id: int
    key: Ed25519PublicKey

    @staticmethod
    def parse(text: str) -> "VerifierKey":
        name, key_id, b64 = text.strip().split("+", 2)
        raw = base64.b64decode(b64, validate=True)
        if not name or not re.fullmatch("[0-9a-f]{8}", key_id) or len(raw) != 33 or raw[0] != 1:
            raise ValueError(f"not an Ed25519 verifier key: {text.strip()}")
        digest = hashlib.sha256(name.encode() + b"\n" + raw).digest()
        if struct.unpack(">I", digest[:4])[0] != int(key_id, 16):
            raise ValueError(f"key id {key_id} does not match the key")
        return VerifierKey(name, int(key_id, 16), Ed25519PublicKey.from_public_bytes(raw[1:]))


def open_note(note: str, key: VerifierKey) -> str:
    """Section 4: the text of a signed note if `key` signed it."""
    split = note.rfind("\n\n")
    if split < 0:
        raise ValueError("not a signed note")
    text = note[: split + 1]
    for line in filter(None, note[split + 2 :].split("\n")):
        m = re.fullmatch("\u2014 (\\S+) (\\S+)", line)
        if not m:
            raise ValueError(f"malformed signature line: {line}")
        sig = base64.b64decode(m.group(2), validate=True)
        if m.group(1) != key.name or len(sig) < 4 or struct.unpack(">I", sig[:4])[0] != key.key_id:
            continue
        try:
            if len(sig) != 68:
                raise InvalidSignature()
            key.key.verify(sig[4:], text.encode("utf-8"))
        except InvalidSignature:
            raise ValueError("the signature by the trusted key does not verify") from None
        return text
    raise ValueError("not signed by the trusted key")


@dataclass
class Checkpoint:
    """Section 5."""

    origin: str
    size: int
    root: bytes

    @staticmethod
    def open(note: str, key: VerifierKey) -> "Checkpoint":
        origin, size, root = open_note(note, key).split("\n")[:3]
        r = base64.b64decode(root, validate=True)
        if not origin or not re.fullmatch("0|[1-9][0-9]*", size) or len(r) != 32:
            raise ValueError("malformed checkpoint")
        return Checkpoint(origin, int(size), r)

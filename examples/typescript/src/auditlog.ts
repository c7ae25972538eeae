// What a client needs to check auditlog's receipts itself, written from
// docs/FORMAT.md alone: the canonical entry encoding (§2.1), the payload
// commitment (§2.2), leaf hashes (§2.3), RFC 9162 proofs with BLAKE3 (§3),
// and C2SP signed notes and checkpoints with Ed25519 (§4, §5).
import { blake3 } from "@noble/hashes/blake3";
import { createHash, createPublicKey, verify as edVerify, KeyObject } from "node:crypto";

export type Bytes = Uint8Array;

const enc = new TextEncoder();

function concat(...parts: Bytes[]): Bytes {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a: Bytes, b: Bytes): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export const hex = (b: Bytes) => Buffer.from(b).toString("hex");

function u8(n: number): Bytes {
  return Uint8Array.of(n);
}

function u16(n: number): Bytes {
  if (n > 0xffff) throw new Error(`length ${n} does not fit a u16`);
  return Uint8Array.of(n >> 8, n & 0xff);
}

function u64(n: bigint): Bytes {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, n);
  return b;
}

function i64(n: bigint): Bytes {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigInt64(0, n);
  return b;
}

function str(s: string): Bytes {
  const b = enc.encode(s);
  return concat(u16(b.length), b);
}

/** The fields of an entry, as GetEntry returns them. */
export interface EntryFields {
  origin: string;
  seq: bigint;
  timestampUnixNanos: bigint;
  subject: string;
  actor: string;
  kind: string;
  contentType: string;
  attributes: Record<string, string>;
  idempotencyKey: string;
  payloadLength: bigint;
  payloadDigest: Bytes;
  prevLeafHash: Bytes;
}

/** FORMAT §2.1: the canonical encoding, version 1. */
export function encodeEntry(e: EntryFields): Bytes {
  // Keys in strictly increasing order of their UTF-8 bytes.
  const keys = Object.keys(e.attributes).sort((a, b) =>
    Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8")),
  );
  return concat(
    enc.encode("auditlog/entry"),
    u8(1),
    str(e.origin),
    u64(e.seq),
    i64(e.timestampUnixNanos),
    str(e.subject),
    str(e.actor),
    str(e.kind),
    str(e.contentType),
    u16(keys.length),
    ...keys.flatMap((k) => [str(k), str(e.attributes[k])]),
    str(e.idempotencyKey),
    u64(e.payloadLength),
    e.payloadDigest,
    e.prevLeafHash,
  );
}

/** FORMAT §2.2. */
export const commitment = (salt: Bytes, payload: Bytes) => blake3(concat(salt, payload));
/** FORMAT §2.3. */
export const leafHash = (encoding: Bytes) => blake3(concat(u8(0), encoding));
const node = (l: Bytes, r: Bytes) => blake3(concat(u8(1), l, r));

/** RFC 9162 §2.1.3.2, with BLAKE3. */
export function verifyInclusion(
  index: bigint,
  size: bigint,
  leaf: Bytes,
  proof: Bytes[],
  root: Bytes,
): boolean {
  if (index >= size) return false;
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of proof) {
    if (p.length !== 32 || sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = node(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = node(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && equal(r, root);
}

/** RFC 9162 §2.1.4.2, with BLAKE3 (0 < first <= second). */
export function verifyConsistency(
  first: bigint,
  second: bigint,
  proof: Bytes[],
  firstRoot: Bytes,
  secondRoot: Bytes,
): boolean {
  if (first === 0n || first > second) return false;
  if (first === second) return proof.length === 0 && equal(firstRoot, secondRoot);
  if (proof.length === 0 || proof.some((p) => p.length !== 32)) return false;
  const path = (first & (first - 1n)) === 0n ? [firstRoot, ...proof] : proof;
  let fn = first - 1n;
  let sn = second - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = node(c, fr);
      sr = node(c, sr);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = node(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && equal(fr, firstRoot) && equal(sr, secondRoot);
}

/** A C2SP verifier key (FORMAT §4): `name+hex8(key id)+base64(0x01 || key)`. */
export interface VerifierKey {
  name: string;
  keyId: number;
  key: KeyObject;
}

export function parseVerifierKey(text: string): VerifierKey {
  // The name has no "+"; the base64 may.
  const [name, id, ...b64] = text.trim().split("+");
  const raw = Buffer.from(b64.join("+"), "base64");
  if (!name || !/^[0-9a-f]{8}$/.test(id ?? "") || raw.length !== 33 || raw[0] !== 1) {
    throw new Error(`not an Ed25519 verifier key: ${text.trim()}`);
  }
  const pub = raw.subarray(1);
  const keyId = createHash("sha256")
    .update(concat(enc.encode(name), u8(0x0a), u8(1), pub))
    .digest()
    .readUInt32BE(0);
  if (keyId !== parseInt(id, 16)) throw new Error(`key id ${id} does not match the key`);
  // An Ed25519 SubjectPublicKeyInfo is a fixed 12-byte prefix and the key.
  const spki = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), pub]);
  return { name, keyId, key: createPublicKey({ key: spki, format: "der", type: "spki" }) };
}

/** FORMAT §4: the text of a signed note if `key` signed it, else an error. */
export function openNote(note: string, key: VerifierKey): string {
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Error("not a signed note");
  const text = note.slice(0, split + 1);
  for (const line of note.slice(split + 2).split("\n").filter((l) => l !== "")) {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m) throw new Error(`malformed signature line: ${line}`);
    const sig = Buffer.from(m[2], "base64");
    if (m[1] !== key.name || sig.length < 4 || sig.readUInt32BE(0) !== key.keyId) continue;
    if (sig.length !== 68 || !edVerify(null, Buffer.from(text, "utf8"), key.key, sig.subarray(4))) {
      throw new Error("the signature by the trusted key does not verify");
    }
    return text;
  }
  throw new Error("not signed by the trusted key");
}

/** FORMAT §5: a checkpoint opened with `key`. */
export interface Checkpoint {
  origin: string;
  size: bigint;
  root: Bytes;
}

export function openCheckpoint(note: string, key: VerifierKey): Checkpoint {
  const [origin, size, root] = openNote(note, key).split("\n");
  const r = Buffer.from(root ?? "", "base64");
  if (!origin || !/^(0|[1-9][0-9]*)$/.test(size ?? "") || r.length !== 32) {
    throw new Error("malformed checkpoint");
  }
  return { origin, size: BigInt(size), root: new Uint8Array(r) };
}

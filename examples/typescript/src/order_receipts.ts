// A marketplace backend's use of auditlog, in TypeScript (Node, @grpc/grpc-js):
//
//   append  records an order's prompt and output in one atomic request with
//           idempotency keys (a retry is answered with the same receipts),
//           checks every receipt against the signed checkpoint, and keeps it;
//   check   later, fetches the current checkpoint and a consistency proof
//           from the kept receipt's checkpoint to it: the log still holds
//           exactly what the receipt promised.
//
//   node dist/order_receipts.js append --order 8812 --receipt r.json
//   node dist/order_receipts.js check --receipt r.json
//
// Options: --server HOST:PORT (default 127.0.0.1:50051), --key verifier.pub
// (default ./verifier.pub), --log NAME (default "default"). A bearer token is
// read from AUDITLOG_TOKEN. Each step prints one JSON line; exit 1 on any
// failed check.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  Bytes,
  commitment,
  encodeEntry,
  equal,
  hex,
  leafHash,
  openCheckpoint,
  parseVerifierKey,
  verifyConsistency,
  verifyInclusion,
} from "./auditlog.js";

const here = dirname(fileURLToPath(import.meta.url));
const protoFile = join(here, "../../../proto/auditlog/v1/auditlog.proto");

function option(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i > 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) throw new Error(`--${name} is required`);
  return v;
}

const verb = process.argv[2];
const server = option("server", "127.0.0.1:50051");
const log = option("log", "default");
const keyFile = option("key", "verifier.pub");
const receiptFile = option("receipt");

const pkg = grpc.loadPackageDefinition(
  protoLoader.loadSync(protoFile, { keepCase: true, longs: String, enums: String, defaults: true }),
) as any;
const client = new pkg.auditlog.v1.AuditLog(server, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (process.env.AUDITLOG_TOKEN) metadata.set("authorization", `Bearer ${process.env.AUDITLOG_TOKEN}`);

function call<T>(method: string, request: object): Promise<T> {
  return new Promise((resolve, reject) =>
    client[method](request, metadata, (err: Error | null, res: T) => (err ? reject(err) : resolve(res))),
  );
}

let key: ReturnType<typeof parseVerifierKey>;

function fail(what: string): never {
  console.log(JSON.stringify({ step: verb, ok: false, error: what }));
  process.exit(1);
}

const bytes = (b: Buffer | Uint8Array): Bytes => new Uint8Array(b);

/** The entry at `seq` re-derived from its fields: leaf hash and payload. */
async function checkStored(seq: bigint, sent: { payload: Bytes; kind: string }, leaf: Bytes) {
  const r: any = await call("GetEntry", { log, seq: seq.toString(), tree_size: 0 });
  const e = r.entry;
  const encoding = encodeEntry({
    origin: e.origin,
    seq: BigInt(e.seq),
    timestampUnixNanos: BigInt(e.timestamp_unix_nanos),
    subject: e.subject,
    actor: e.actor,
    kind: e.kind,
    contentType: e.content_type,
    attributes: e.attributes,
    idempotencyKey: e.idempotency_key,
    payloadLength: BigInt(e.payload_length),
    payloadDigest: bytes(e.payload_digest),
    prevLeafHash: bytes(e.prev_leaf_hash),
  });
  if (!equal(leafHash(encoding), leaf)) fail(`entry ${seq}: its fields do not hash to the receipt's leaf`);
  if (!equal(commitment(bytes(e.salt), bytes(e.payload)), bytes(e.payload_digest))) {
    fail(`entry ${seq}: the payload does not match its commitment`);
  }
  if (!equal(bytes(e.payload), sent.payload) || e.kind !== sent.kind) {
    fail(`entry ${seq}: not what was sent`);
  }
}

async function append() {
  const order = option("order");
  const enc = new TextEncoder();
  const entries = [
    { kind: "prompt", actor: "buyer:42", text: `Write a haiku about escrow (order ${order})` },
    { kind: "output", actor: "seller:7", text: "Coins wait in the vault\nuntil both hands let go\nspring rain, then payment" },
  ].map((x) => ({
    subject: `order:${order}`,
    actor: x.actor,
    kind: x.kind,
    content_type: "text/plain; charset=utf-8",
    payload: Buffer.from(enc.encode(x.text)),
    attributes: { gig: "haiku-pro" },
    idempotency_key: `order-${order}-${x.kind}`,
  }));
  const request = { log, entries };
  const first: any = await call("Append", request);
  // The network failed after the server answered? Retry: same receipts.
  const retry: any = await call("Append", request);
  const cp = openCheckpoint(first.checkpoint, key);
  const receipts = [];
  for (const [i, r] of first.receipts.entries()) {
    const seq = BigInt(r.seq);
    const leaf = bytes(r.leaf_hash);
    const proof = r.inclusion_proof.map(bytes);
    if (!verifyInclusion(seq, cp.size, leaf, proof, cp.root)) fail(`receipt ${seq}: bad inclusion proof`);
    const again = retry.receipts[i];
    if (!again.duplicate || again.seq !== r.seq || !equal(bytes(again.leaf_hash), leaf)) {
      fail(`the retry of entry ${i} was not answered with its original receipt`);
    }
    await checkStored(seq, { payload: bytes(entries[i].payload), kind: entries[i].kind }, leaf);
    receipts.push({ seq: r.seq, leaf_hash: hex(leaf), timestamp_unix_nanos: r.timestamp_unix_nanos });
  }
  // Tampering with the proof must be caught (a check that cannot fail is no check).
  const p0 = first.receipts[0].inclusion_proof.map(bytes);
  if (p0.length > 0) {
    p0[0] = Uint8Array.from(p0[0], (b: number, j: number) => (j === 0 ? b ^ 1 : b));
    if (verifyInclusion(BigInt(first.receipts[0].seq), cp.size, bytes(first.receipts[0].leaf_hash), p0, cp.root)) {
      fail("a tampered inclusion proof verified");
    }
  }
  writeFileSync(receiptFile, JSON.stringify({ log, order, checkpoint: first.checkpoint, receipts }, null, 2));
  console.log(
    JSON.stringify({ step: "append", ok: true, order, seqs: receipts.map((r) => r.seq), tree_size: cp.size.toString(), duplicate_on_retry: true }),
  );
}

async function check() {
  const kept = JSON.parse(readFileSync(receiptFile, "utf8"));
  const old = openCheckpoint(kept.checkpoint, key);
  const now: any = await call("GetCheckpoint", { log });
  const cur = openCheckpoint(now.checkpoint, key);
  if (cur.origin !== old.origin) fail("the current checkpoint is of another log");
  if (cur.size < old.size) fail(`the log shrank from ${old.size} to ${cur.size}`);
  let proof: Bytes[] = [];
  if (cur.size > old.size) {
    const r: any = await call("GetConsistencyProof", {
      log,
      from_size: old.size.toString(),
      to_size: cur.size.toString(),
    });
    proof = r.proof.map(bytes);
  }
  if (!verifyConsistency(old.size, cur.size, proof, old.root, cur.root)) {
    fail(`the log at ${cur.size} does not extend the receipt's checkpoint at ${old.size}: history was rewritten`);
  }
  if (proof.length > 0) {
    const bad = proof.map((p, j) => (j === proof.length - 1 ? Uint8Array.from(p, (b, k) => (k === 0 ? b ^ 1 : b)) : p));
    if (verifyConsistency(old.size, cur.size, bad, old.root, cur.root)) fail("a tampered consistency proof verified");
  }
  // The kept entries, proven again in today's tree.
  for (const r of kept.receipts) {
    const e: any = await call("GetEntry", { log, seq: r.seq, tree_size: cur.size.toString() });
    const ok = verifyInclusion(BigInt(r.seq), cur.size, Buffer.from(r.leaf_hash, "hex"), e.inclusion_proof.map(bytes), cur.root);
    if (!ok || hex(bytes(e.entry.leaf_hash)) !== r.leaf_hash) fail(`entry ${r.seq} is no longer in the log as received`);
  }
  console.log(
    JSON.stringify({ step: "check", ok: true, order: kept.order, from_size: old.size.toString(), to_size: cur.size.toString(), consistent: true }),
  );
}

try {
  key = parseVerifierKey(readFileSync(keyFile, "utf8"));
  if (verb === "append") await append();
  else if (verb === "check") await check();
  else throw new Error("usage: order_receipts.js append|check --receipt FILE [--order ID] [--server HOST:PORT] [--key verifier.pub] [--log NAME]");
} catch (e) {
  fail((e as Error).message);
} finally {
  client.close();
}

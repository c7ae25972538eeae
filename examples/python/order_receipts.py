"""A marketplace backend's use of auditlog, in Python (grpcio):

  append  records an order's prompt and output in one atomic request with
          idempotency keys (a retry is answered with the same receipts),
          checks every receipt against the signed checkpoint, and keeps it;
  check   later, fetches the current checkpoint and a consistency proof
          from the kept receipt's checkpoint to it: the log still holds
          exactly what the receipt promised.

  python order_receipts.py append --order 8812 --receipt r.json
  python order_receipts.py check --receipt r.json

Options: --server HOST:PORT (default 127.0.0.1:50051), --key verifier.pub,
--log NAME (default "default"). A bearer token is read from AUDITLOG_TOKEN.
Each step prints one JSON line; exit 1 on any failed check.
"""

import argparse
import json
import os
import pathlib
import sys

import grpc

import auditlog_format as fmt

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"
sys.path.insert(0, str(PROTO_DIR))
# Compiled at import time by grpcio-tools: no generated files to keep.
pb, rpc = grpc.protos_and_services("auditlog/v1/auditlog.proto")


class CheckFailed(Exception):
    pass


def require(ok: bool, what: str):
    if not ok:
        raise CheckFailed(what)


def flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def check_stored(stub, meta, log, seq, sent_payload, sent_kind, leaf):
    """The entry at `seq`, re-derived from its fields: leaf hash and payload."""
    e = stub.GetEntry(pb.GetEntryRequest(log=log, seq=seq), metadata=meta).entry
    require(fmt.leaf_hash(fmt.encode_entry(e)) == leaf, f"entry {seq}: its fields do not hash to the receipt's leaf")
    require(fmt.commitment(e.salt, e.payload) == e.payload_digest, f"entry {seq}: payload does not match its commitment")
    require(e.payload == sent_payload and e.kind == sent_kind, f"entry {seq}: not what was sent")


def append(stub, meta, key, args):
    order = args.order
    entries = [
        pb.EntryInput(
            subject=f"order:{order}",
            actor=actor,
            kind=kind,
            content_type="text/plain; charset=utf-8",
            payload=text.encode(),
            attributes={"gig": "haiku-pro"},
            idempotency_key=f"order-{order}-{kind}",
        )
        for kind, actor, text in [
            ("prompt", "buyer:42", f"Write a haiku about escrow (order {order})"),
            ("output", "seller:7", "Coins wait in the vault\nuntil both hands let go\nspring rain, then payment"),
        ]
    ]
    request = pb.AppendRequest(log=args.log, entries=entries)
    first = stub.Append(request, metadata=meta)
    # The network failed after the server answered? Retry: same receipts.
    retry = stub.Append(request, metadata=meta)
    cp = fmt.Checkpoint.open(first.checkpoint, key)
    receipts = []
    for i, r in enumerate(first.receipts):
        require(
            fmt.verify_inclusion(r.seq, cp.size, r.leaf_hash, list(r.inclusion_proof), cp.root),
            f"receipt {r.seq}: bad inclusion proof",
        )
        again = retry.receipts[i]
        require(
            again.duplicate and again.seq == r.seq and again.leaf_hash == r.leaf_hash,
            f"the retry of entry {i} was not answered with its original receipt",
        )
        check_stored(stub, meta, args.log, r.seq, entries[i].payload, entries[i].kind, r.leaf_hash)
        receipts.append({"seq": r.seq, "leaf_hash": r.leaf_hash.hex(), "timestamp_unix_nanos": r.timestamp_unix_nanos})
    # Tampering with the proof must be caught (a check that cannot fail is no check).
    r0 = first.receipts[0]
    if r0.inclusion_proof:
        bad = [flip(r0.inclusion_proof[0]), *r0.inclusion_proof[1:]]
        require(not fmt.verify_inclusion(r0.seq, cp.size, r0.leaf_hash, bad, cp.root), "a tampered inclusion proof verified")
    pathlib.Path(args.receipt).write_text(
        json.dumps({"log": args.log, "order": order, "checkpoint": first.checkpoint, "receipts": receipts}, indent=2)
    )
    return {"step": "append", "ok": True, "order": order, "seqs": [r["seq"] for r in receipts], "tree_size": cp.size, "duplicate_on_retry": True}


def check(stub, meta, key, args):
    kept = json.loads(pathlib.Path(args.receipt).read_text())
    old = fmt.Checkpoint.open(kept["checkpoint"], key)
    cur = fmt.Checkpoint.open(stub.GetCheckpoint(pb.GetCheckpointRequest(log=args.log), metadata=meta).checkpoint, key)
    require(cur.origin == old.origin, "the current checkpoint is of another log")
    require(cur.size >= old.size, f"the log shrank from {old.size} to {cur.size}")
    proof = []
    if cur.size > old.size:
        r = stub.GetConsistencyProof(
            pb.GetConsistencyProofRequest(log=args.log, from_size=old.size, to_size=cur.size), metadata=meta
        )
        proof = list(r.proof)
    require(
        fmt.verify_consistency(old.size, cur.size, proof, old.root, cur.root),
        f"the log at {cur.size} does not extend the receipt's checkpoint at {old.size}: history was rewritten",
    )
    if proof:
        bad = [*proof[:-1], flip(proof[-1])]
        require(not fmt.verify_consistency(old.size, cur.size, bad, old.root, cur.root), "a tampered consistency proof verified")
    # The kept entries, proven again in today's tree.
    for r in kept["receipts"]:
        e = stub.GetEntry(pb.GetEntryRequest(log=args.log, seq=r["seq"], tree_size=cur.size), metadata=meta)
        leaf = bytes.fromhex(r["leaf_hash"])
        require(
            e.entry.leaf_hash == leaf and fmt.verify_inclusion(r["seq"], cur.size, leaf, list(e.inclusion_proof), cur.root),
            f"entry {r['seq']} is no longer in the log as received",
        )
    return {"step": "check", "ok": True, "order": kept["order"], "from_size": old.size, "to_size": cur.size, "consistent": True}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["append", "check"])
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--key", default="verifier.pub")
    p.add_argument("--log", default="default")
    p.add_argument("--order")
    p.add_argument("--receipt", required=True)
    args = p.parse_args()
    if args.step == "append" and not args.order:
        p.error("append needs --order")
    token = os.environ.get("AUDITLOG_TOKEN")
    meta = [("authorization", f"Bearer {token}")] if token else None
    try:
        key = fmt.VerifierKey.parse(pathlib.Path(args.key).read_text())
        with grpc.insecure_channel(args.server) as channel:
            stub = rpc.AuditLogStub(channel)
            out = (append if args.step == "append" else check)(stub, meta, key, args)
    except (CheckFailed, ValueError, grpc.RpcError) as e:
        detail = e.details() if isinstance(e, grpc.RpcError) else str(e)
        print(json.dumps({"step": args.step, "ok": False, "error": detail}))
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

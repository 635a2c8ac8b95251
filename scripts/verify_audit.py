#!/usr/bin/env python3
"""Recompute an election's sealed-log head from its reports.csv alone.

An independent check of the sealed log (docs/audit.md), written apart from
the Rust code and with nothing but Python's standard library, so an outsider
can read all of it and trust none of ours:

    curl -o election-2025-reports.csv http://HOST/v1/elections/2025/reports.csv
    curl -o audit.json http://HOST/v1/elections/2025/audit
    python3 scripts/verify_audit.py election-2025-reports.csv --audit audit.json

It rebuilds each report's canonical form from its CSV rows, chains the
SHA-256 of each in report-id order, and then:

- with --audit: checks that every checkpoint the audit answer lists (the
  head and the earlier heads) is the head of the chain after exactly its
  `sealed_reports` reports, all with ids up to its `sealed_through_report_id`;
- with --head H: says after how many reports the chain's head was H (a head
  noted earlier), or that it never was;
- with --through ID: prints the head after the reports with ids up to ID;
- always: prints the head after every report in the file.

Exit status: 0 when everything asked for matched, 1 when something did not,
2 when the input could not be read.

The export writes a leading ' before a `reason` that starts with = + - @ tab,
carriage return or ' (so a spreadsheet shows it as text); this script removes
one leading ' from a reason that has one, which gives back the stored text.
"""

import argparse
import csv
import datetime
import hashlib
import json
import os
import re
import struct
import sys

ZERO_HEAD = bytes(32)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
REQUIRED = [
    "report_id", "ballot_box_id", "city", "revision", "reason", "party", "votes",
    "difference", "received_at", "omitted", "payload_sha256", "payload_hash",
]
TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z$")


class BadInput(Exception):
    pass


def text(value):
    data = value.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def blob(data):
    return struct.pack(">I", len(data)) + data


def micros(value):
    """RFC 3339 UTC with up to microseconds, as whole microseconds since 1970."""
    match = TIME.match(value)
    if not match:
        raise BadInput(f"received_at {value!r} is not an RFC 3339 UTC time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = int((match.group(7) or "0").ljust(6, "0"))
    instant = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.timezone.utc)
    delta = instant - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + fraction


def unneutralise(reason):
    return reason[1:] if reason.startswith("'") else reason


def canonical(election, rows):
    first = rows[0]
    out = bytearray(b"election-seal/v1")
    out += struct.pack(">q", int(first["report_id"]))
    out += text(election)
    out += text(first["ballot_box_id"])
    out += text(first["city"])
    out += struct.pack(">q", int(first["revision"]))
    out += text(unneutralise(first["reason"]))
    out += struct.pack(">q", micros(first["received_at"]))
    out += blob(bytes.fromhex(first["payload_sha256"]))
    out += blob(bytes.fromhex(first["payload_hash"]))
    parties = sorted(rows, key=lambda row: row["party"].encode("utf-8"))
    out += struct.pack(">Q", len(parties))
    for row in parties:
        out += text(row["party"])
        if row["omitted"] == "true":
            out += b"\x00" + struct.pack(">q", 0)
        elif row["omitted"] == "false":
            out += b"\x01" + struct.pack(">q", int(row["votes"]))
        else:
            raise BadInput(f"report {first['report_id']}: omitted is {row['omitted']!r}")
        out += struct.pack(">q", int(row["difference"]))
    return bytes(out)


def reports(path):
    """The file's reports in order: (id, [rows]), checking ids ascend."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise BadInput(f"{path}: missing columns {', '.join(missing)} (an older export?)")
        current, rows = None, []
        for row in reader:
            report_id = int(row["report_id"])
            if current is not None and report_id != current:
                if report_id < current:
                    raise BadInput(f"report {report_id} comes after {current}: not in id order")
                yield current, rows
                rows = []
            current = report_id
            rows.append(row)
        if current is not None:
            yield current, rows


def chain(election, path):
    """[(report id, reports so far, head after it)] for the whole file."""
    head, points = ZERO_HEAD, []
    for count, (report_id, rows) in enumerate(reports(path), start=1):
        for field in ("ballot_box_id", "city", "revision", "reason", "received_at",
                      "payload_sha256", "payload_hash"):
            if any(row[field] != rows[0][field] for row in rows):
                raise BadInput(f"report {report_id}: its rows disagree on {field}")
        leaf = hashlib.sha256(canonical(election, rows)).digest()
        head = hashlib.sha256(head + leaf).digest()
        points.append((report_id, count, head))
    return points


def head_through(points, through):
    """(count, head) after the reports with ids up to `through`."""
    count, head = 0, ZERO_HEAD
    for report_id, n, h in points:
        if report_id > through:
            break
        count, head = n, h
    return count, head


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="reports.csv as exported by GET /v1/elections/{e}/reports.csv")
    parser.add_argument("--election", help="the election id (default: from a file named election-<e>-reports.csv)")
    parser.add_argument("--audit", help="the answer of GET /v1/elections/{e}/audit, saved to a file ('-': standard input)")
    parser.add_argument("--head", help="a head noted earlier: after how many reports was it the head?")
    parser.add_argument("--through", type=int, help="print the head after the reports with ids up to this one")
    args = parser.parse_args()

    election = args.election
    if election is None:
        match = re.match(r"^election-(.+)-reports\.csv$", os.path.basename(args.csv))
        if not match:
            print("verify_audit: give --election (the file name does not say)", file=sys.stderr)
            return 2
        election = match.group(1)
    try:
        points = chain(election, args.csv)
        audit = None
        if args.audit:
            source = sys.stdin if args.audit == "-" else open(args.audit, encoding="utf-8")
            with source:
                audit = json.load(source)
    except (OSError, ValueError, KeyError, BadInput) as error:
        print(f"verify_audit: {error}", file=sys.stderr)
        return 2

    last_id = points[-1][0] if points else 0
    final = points[-1][2] if points else ZERO_HEAD
    print(f"election {election}: {len(points)} reports in the file, through report {last_id}, head {final.hex()}")
    ok = True
    if args.through is not None:
        count, head = head_through(points, args.through)
        print(f"through report {args.through}: {count} reports, head {head.hex()}")
    if args.head:
        wanted = args.head.strip().lower()
        found = [(rid, n) for rid, n, h in points if h.hex() == wanted]
        if wanted == ZERO_HEAD.hex():
            print("the noted head is the empty chain's")
        elif found:
            print(f"the noted head is the head after {found[0][1]} reports (through report {found[0][0]})")
        else:
            print(f"the noted head {wanted} is not the head after any prefix of this file: MISMATCH")
            ok = False
    if audit is not None:
        try:
            checkpoints = [{
                "head": audit["head"],
                "sealed_reports": audit["sealed_reports"],
                "sealed_through_report_id": audit["sealed_through_report_id"],
            }] + list(audit.get("heads", []))
            for checkpoint in checkpoints:
                through = int(checkpoint["sealed_through_report_id"])
                if through > last_id and int(checkpoint["sealed_reports"]) > len(points):
                    print(f"checkpoint through report {through}: beyond this file, not checked")
                    continue
                count, head = head_through(points, through)
                matches = head.hex() == str(checkpoint["head"]).lower() and count == int(checkpoint["sealed_reports"])
                verdict = "ok" if matches else (
                    f"MISMATCH: the file gives {count} reports and head {head.hex()}")
                print(f"checkpoint through report {through} ({checkpoint['sealed_reports']} reports, head {checkpoint['head']}): {verdict}")
                ok = ok and matches
        except (KeyError, TypeError, ValueError) as error:
            print(f"verify_audit: the audit answer is not as documented: {error}", file=sys.stderr)
            return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Lists, and optionally blanks, the device-code entries of the CUDA fat binaries embedded in an
ELF shared object (its .nv_fatbin section).

    fatbin.py FILE                      # what is in it: per kind (ptx/sass) and arch, MiB
    fatbin.py FILE --keep-sass 90 ...   # zero the payload of every SASS entry of another arch
    fatbin.py FILE --keep-sass 90 --drop-shadowed-ptx   # and the PTX that sm_90 SASS makes unused

Why: vLLM's _C_stable_libtorch.abi3.so carries machine code (SASS) for sm_75, 80, 86, 89, 90,
100 and 120, each entry compressed (zstd), so the archive cannot shrink it. An H200 (sm_90) can
only run sm_90 SASS or JIT-compile PTX: SASS only runs on GPUs of its own major version, so the
driver never reads the other entries. Blanking (zeroing) their payloads keeps every header,
offset and size as it was (the file's layout does not move), and zeros compress to nothing.
PTX entries are kept (some kernels ship only sm_80 PTX and are JIT-compiled on sm_90), except,
with --drop-shadowed-ptx, in a fat binary (one per compiled source file, all its kernels in each
entry) that also holds SASS of a kept arch: the driver loads an exact SASS match and JIT-compiles
PTX only when none is there (CUDA_FORCE_PTX_JIT=1 would defeat this; leave it unset).

The fat binary layout (as cuobjdump reads it): a 16-byte header (magic 0xBA55ED50, u16 version,
u16 header size, u64 size of the entries), then entries: u16 kind (1 PTX, 2 ELF/SASS), u16,
u32 header size, u64 payload size, ..., u32 arch at offset 28; the payload follows the header.
"""
from __future__ import annotations

import argparse
import collections
import struct
import sys

MAGIC = 0xBA55ED50


def section(data: bytes, name: str) -> tuple[int, int] | None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit("not a little-endian ELF64 file")
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple:
        return struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)

    strtab = header(e_shstrndx)[4]
    for i in range(e_shnum):
        h = header(i)
        start = strtab + h[0]
        if data[start : data.index(b"\0", start)].decode() == name:
            return h[4], h[5]  # file offset, size
    return None


def entries(data: bytes, offset: int, size: int):
    pos, end = offset, offset + size
    while pos + 16 <= end:
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:
            pos += 8  # alignment padding between fat binaries
            continue
        entry, stop = pos + header_size, pos + header_size + fat_size
        binary = pos
        while entry < stop:
            kind, _u, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            if entry_header == 0:
                break
            (arch,) = struct.unpack_from("<I", data, entry + 28)
            yield {"kind": "ptx" if kind == 1 else "sass", "arch": arch, "payload": entry + entry_header, "size": payload,
                   "binary": binary}
            entry += entry_header + payload
        pos = stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--keep-sass", type=int, nargs="+", metavar="SM", help="keep SASS of these archs (e.g. 90), blank the rest")
    ap.add_argument("--drop-shadowed-ptx", action="store_true",
                    help="with --keep-sass: also blank the PTX of fat binaries that hold SASS of a kept arch")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    data = bytearray(open(a.file, "rb").read())
    sec = section(data, ".nv_fatbin")
    if sec is None:
        print(f"{a.file}: no .nv_fatbin section")
        return 0
    size = collections.Counter()
    count = collections.Counter()
    blanked = 0
    seen = 0
    found = list(entries(data, *sec))
    shadowed = set()
    if a.keep_sass and a.drop_shadowed_ptx:
        shadowed = {e["binary"] for e in found if e["kind"] == "sass" and e["arch"] in a.keep_sass}
    for e in found:
        key = f"{e['kind']}_sm{e['arch']}"
        size[key] += e["size"]
        count[key] += 1
        seen += e["size"]
        if a.keep_sass and ((e["kind"] == "sass" and e["arch"] not in a.keep_sass)
                            or (e["kind"] == "ptx" and e["binary"] in shadowed)):
            data[e["payload"] : e["payload"] + e["size"]] = bytes(e["size"])
            blanked += e["size"]
    if seen == 0:
        raise SystemExit(f"{a.file}: .nv_fatbin holds no entry this script can read: left alone")
    if not a.quiet:
        print(f"{a.file}: .nv_fatbin {sec[1] / 2**20:.1f} MiB of {len(data) / 2**20:.1f} MiB")
        for k in sorted(size):
            print(f"  {k:11s} {count[k]:5d} entries {size[k] / 2**20:8.2f} MiB")
    if a.keep_sass:
        kept = [k for k in size if k.startswith("sass_") and int(k[len("sass_sm"):]) in a.keep_sass]
        if not kept:
            raise SystemExit(f"{a.file}: no SASS for sm {a.keep_sass}: refusing to blank the rest")
        with open(a.file, "r+b") as f:
            f.write(data)
        what = " and PTX shadowed by it" if a.drop_shadowed_ptx else ""
        print(f"{a.file}: kept SASS for sm {a.keep_sass}{what}; blanked the rest, {blanked / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

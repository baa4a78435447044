"""A hand-written protobuf wire encoder and parser for the tests (no protobuf library
needed), with builders for nearline.proto's messages."""
import json
import struct


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def id_msg(v):
    return field(1, 0, v) if isinstance(v, int) else field(2, 2, v.encode())


def floats(v):
    return b"".join(struct.pack("<f", x) for x in v)


def vector(i, values, meta=None):
    m = field(1, 2, id_msg(i)) + field(2, 2, floats(values))
    return m + (field(3, 2, json.dumps(meta).encode()) if meta else b"")


def search_req(q, k=0, flt=None, without_meta=False):
    m = field(1, 2, floats(q)) + (field(2, 0, k) if k else b"")
    m += field(3, 2, json.dumps(flt).encode()) if flt else b""
    return m + (field(5, 0, 1) if without_meta else b"")


def parse(buf):
    """A message as {field: [values]} (varints as ints, length-delimited as bytes, fixed32 raw)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wire)
        out.setdefault(num, []).append(v)
    return out


def read_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i

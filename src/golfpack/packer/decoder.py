'''`golfpack export-decoder`: a minimal standalone QGv3 loader to ship with a submission.

The exported file needs only the standard library, numpy and torch (zstd/brotli streams also need
those packages, with a clear error if absent). Its bytes count against the 16,000,000-byte cap, so it
is short - but it is the same arithmetic as golfpack's reader (TensorRecord.dequantize): levels are
multiplied by their scale in fp32, then cast to the original dtype. It applies the reader's
Limits (header, blocks, streams, tensors, counts, raw and element totals, names, dims) before it
allocates, checks every crc32, that each stream decodes to exactly its declared size (a zstd frame's
declared size is read before decoding), that streams and tensors tile exactly, and with check=True
each tensor's sha256 digest. Any malformed file is a ValueError, never another exception type;
golfpack's full reader (`golfpack verify`) checks every rule of docs/qgv3.md. It cannot import golfpack, so it spells the format's
numbers out; tests/packer/test_decoder.py checks them against formats/qgv3_constants.py.
'''

from __future__ import annotations

import os
from typing import Any

from golfpack._io import write_bytes_atomic
from golfpack.errors import UsageError

DECODER_SOURCE = r'''"""QGv3 loader (from golfpack export-decoder): sd = load("model.qg3") -> {name: torch.Tensor}."""
import hashlib, json, lzma, re, struct, zlib
import numpy as np
import torch

DT = {"float16": "<f2", "bfloat16": "<i2", "float32": "<f4", "float64": "<f8", "int64": "<i8",
      "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "u1"}


def _mod(name):
    try:
        return __import__(name)
    except ImportError:
        raise ImportError(f"this artifact has {name} streams: pip install {name}") from None


# canonical labels only
SPEC = re.compile(r"int[2-8](:g(32|64|128|256)(s[2-8])?)?(:absmax|:mse|:hmse|:sd([1-9]|[1-5][0-9]|6[0-4])(\.[1-9])?)?(\+gptq)?"
                  r"(\+out([1-9]|[1-4][0-9]|50)|\+lqer([1-9]|[1-5][0-9]|6[0-4]))?|fp16|bf16|fp32|exact")  # +out and +lqer: one at most
OD = np.dtype([("d", "<u4"), ("v", "<f2")])  # outliers: index delta, fp16 value
HEX = re.compile(r"[0-9a-f]{64}")
OPT = ("scales", "scale_offset", "rows", "scale_group", "subscales", "subscale_offset", "lqer", "outliers")  # a tensor's optional keys
L = {"header": 16 << 20, "raw": 256 << 20, "numel": 1 << 28, "blocks": 64, "streams": 64, "tensors": 100000, "name": 1024, "ndim": 8, "out": 512 << 20}


def _i(v, hi=1 << 40):  # an int in [0, hi]; bools, floats and strings are not ints
    if type(v) is not int or not 0 <= v <= hi:
        raise ValueError(f"bad integer {v!r}")
    return v


def _keys(d, req, opt=()):
    if type(d) is not dict or not set(req) <= d.keys() <= set(req) | set(opt):
        raise ValueError(f"bad header entry {str(d)[:80]}")
    return d


def _fin(t):
    v = float(t)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError("non-finite number")
    return v


def _tree(v, d):  # nested <= 32 deep, ints within 2^63, strings UTF-8
    if type(v) is dict:
        return d < 32 and all(_tree(k, d + 1) and _tree(x, d + 1) for k, x in v.items())
    if type(v) is list:
        return d < 32 and all(_tree(x, d + 1) for x in v)
    if type(v) is str:
        v.encode()
    return type(v) is not int or abs(v) <= 1 << 63


def _rans(b, n, ids=False):  # codec 5 (docs/qgv3.md 4a): static rANS, 16-bit frequencies and words, chunk tables
    if not n:
        if b:
            raise ValueError("rans stream of 0 bytes is not empty")
        return b""
    p = [0]

    def v(hi):  # a varint (LEB128, <= 5 bytes) in [0, hi]
        x = s = 0
        for _ in range(5):
            c = b[p[0]]
            p[0] += 1
            x |= (c & 127) << s
            s += 7
            if c < 128:
                return _i(x, hi)
        raise ValueError("rans varint too long")

    try:
        D, S, T = v(1 << 40), v(n), v(1 if ids else 256)
        if D != n or not S or not T:
            raise ValueError("rans stream of the wrong size, or a chunk size or table count of 0")
        key, sym, fr, cu = [], [], [], []
        for j in range(T):
            lo, hi = b[p[0]], b[p[0] + 1]
            p[0] += 2
            f = np.array([v(65536) for _ in range(hi - lo + 1)], np.int64)
            if lo > hi or f.sum() != 65536 or not f[0] or not f[-1]:
                raise ValueError("bad rans table")
            z, c = np.flatnonzero(f), np.cumsum(f) - f
            key.append(j * 65536 + c[z]), sym.append(lo + z), fr.append(f[z]), cu.append(c[z])
        tab = np.zeros(1, np.int64)
        if T > 1:
            m = v(len(b) - p[0])
            tab = np.frombuffer(_rans(b[p[0]:p[0] + m], -(-n // S), True), np.uint8).astype(np.int64)
            p[0] += m
            if tab.max() >= T:
                raise ValueError("bad rans chunk table")
        lo_n = max(1, -(-n // 65536))
        N = v(min(n, max(4096, lo_n)))
    except IndexError:
        raise ValueError("rans stream truncated") from None
    if N < lo_n or len(b) - p[0] < 4 * N or (len(b) - p[0]) % 2:
        raise ValueError("bad rans lanes or size")
    key, sym = np.concatenate(key), np.concatenate(sym)
    fr, cu = np.concatenate(fr).astype(np.uint64), np.concatenate(cu).astype(np.uint64)
    x = np.frombuffer(b, "<u4", N, p[0]).astype(np.uint64)
    w = np.frombuffer(b, "<u2", offset=p[0] + 4 * N).astype(np.uint64)
    out, r, L, P = np.empty(n, np.uint8), 0, np.uint64(65536), np.uint64(16)
    if (x < L).any():
        raise ValueError("bad rans state")
    for t in range(0, n, N):
        m = min(N, n - t)
        s = x[:m] & np.uint64(65535)
        k = np.searchsorted(key, tab[np.arange(t, t + m) // S if T > 1 else 0] * 65536 + s.astype(np.int64), "right") - 1
        out[t:t + m] = sym[k]
        y = fr[k] * (x[:m] >> P) + s - cu[k]
        e = np.flatnonzero(y < L)
        if r + e.size > w.size:
            raise ValueError("rans stream truncated")
        y[e] = (y[e] << P) | w[r:r + e.size]
        r += e.size
        x[:m] = y
    if r != w.size or (x != L).any():
        raise ValueError("rans stream does not end cleanly")
    return out.tobytes()


def _unz(codec, b, n):  # codec ids: 0 raw, 1 raw deflate, 2 props byte + raw lzma1, 3 zstd, 4 brotli, 5 rans
    end = True
    if codec == 5:
        return _rans(b, n)
    if codec == 0:
        out = b
    elif codec == 1:
        d = zlib.decompressobj(-15)
        out = d.decompress(b, n + 1)
        end = d.eof and not d.unused_data and not d.unconsumed_tail
    elif codec == 2:
        p = b[0]
        f = {"id": lzma.FILTER_LZMA1, "lc": p % 9, "lp": p // 9 % 5, "pb": p // 45,
             "dict_size": min(1 << 26, max(1 << 12, 1 << max(0, n - 1).bit_length()))}
        d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[f])
        out = d.decompress(b[1:], n + 1)
        end = d.eof and not d.unused_data
    elif codec == 3:
        z = _mod("zstandard")
        if z.get_frame_parameters(b).content_size != n:  # before decoding: the frame's size is what gets allocated
            raise ValueError("zstd frame declares the wrong size")
        d = z.ZstdDecompressor(max_window_size=1 << 27).decompressobj()
        out = d.decompress(b)
        end = d.eof and not d.unused_data
    elif codec == 4:
        d = _mod("brotli").Decompressor()
        out = d.process(b, output_buffer_limit=n + 1)
        end = d.is_finished()
    else:
        raise ValueError(f"unknown codec id {codec}")
    if len(out) != n or not end:
        raise ValueError("stream decodes to the wrong size")
    return out


def _levels(raw, bits, n, dense):  # stored value = level + qmax, `bits` bits LSB-first (dense) or a byte each
    q, out = (1 << bits - 1) - 1, np.empty(n, np.int8)
    if dense and bits < 8:
        if n * bits % 8 and raw[-1] >> n * bits % 8:
            raise ValueError("non-zero padding bits")
        for lo in range(0, n, 1 << 20):  # in chunks: the uint64 words cost 8 bytes a value
            m = min(n - lo, 1 << 20)
            g = -(-m // 8)  # 8 values per `bits` bytes
            a = np.zeros(g * bits, np.uint8)
            a[:(m * bits + 7) // 8] = np.frombuffer(raw, np.uint8, (m * bits + 7) // 8, lo * bits // 8)
            w = np.zeros((g, 8), np.uint8)
            w[:, :bits] = a.reshape(g, bits)
            u = (w.view("<u8") >> np.arange(0, 8 * bits, bits, dtype=np.uint64)) & np.uint64((1 << bits) - 1)
            out[lo:lo + m] = u.reshape(-1)[:m] - q
            if n and u.reshape(-1)[:m].max() > 2 * q:
                raise ValueError("level out of range")
    else:
        u = np.frombuffer(raw, np.uint8, n)
        if n and u.max() > 2 * q:
            raise ValueError("level out of range")
        out[:] = u.astype(np.int16) - q
    return out


def load(path, check=True):
    try:
        return _load(path, check)
    except (ValueError, ImportError, OSError):
        raise
    except Exception as e:  # any other failure on a malformed file is still a malformed file
        raise ValueError(f"{path}: invalid QGv3 file ({type(e).__name__}: {e})") from None


def _load(path, check):
    b = open(path, "rb").read()
    if len(b) < 24:
        raise ValueError(f"{path}: truncated")
    magic, ver, hc, fl, hs, hr, crc = struct.unpack_from("<8sHBBIII", b)
    if magic != b"QGv3\r\n\x1a\n" or ver != 3 or fl:
        raise ValueError(f"{path}: not a QGv3 version 3 file")
    pos = 24 + hs
    if max(hs, hr) > L["header"] or pos > len(b):
        raise ValueError("header too big or file truncated")
    if zlib.crc32(b[24:pos]) != crc:
        raise ValueError("header checksum mismatch")
    h = _keys(json.loads(_unz(hc, b[24:pos], hr), parse_float=_fin, parse_constant=_fin),
              ("config", "policy", "meta", "tensors", "streams", "blocks"))
    if any(h[k] is not None and type(h[k]) is not dict or not _tree(h[k], 0) for k in ("config", "policy", "meta")):
        raise ValueError("config, policy and meta must be objects or null, of JSON values")
    if len(h["blocks"]) > L["blocks"] or len(h["streams"]) > L["streams"] or len(h["tensors"]) > L["tensors"]:
        raise ValueError("too many blocks, streams or tensors")
    blocks, fill, raw_total = [], [], 0
    for k in h["blocks"]:
        _keys(k, ("codec", "raw", "stored", "crc"))
        n, st = _i(k["raw"], L["raw"]), _i(k["stored"], len(b))
        raw_total += n
        s = b[pos:pos + st]
        pos += st
        if raw_total > L["raw"] or pos > len(b):
            raise ValueError("block too big or file truncated")
        if zlib.crc32(s) != k["crc"]:
            raise ValueError("block checksum mismatch")
        blocks.append(_unz(_i(k["codec"], 5), s, n))
        fill.append(0)
    if pos != len(b):
        raise ValueError("trailing bytes")
    arrays, used, keys = [], [], []
    for s in h["streams"]:  # kind 0 levels, 1 scales, 2 passthrough, 3 sub-scales, 4 outliers; layout 0 plain, 1 shuffle, 2 dense, 3 byte
        _keys(s, ("kind", "count", "layout", "block", "at"), ("bits", "dtype", "alone"))
        bi, n, lay = _i(s["block"], len(blocks) - 1), _i(s["count"], L["numel"]), _i(s["layout"], 3)
        if _i(s["at"]) != fill[bi] or ("bits" in s) + ("dtype" in s) != (s["kind"] != 4) or _i(s.get("alone", 0)) is None:
            raise ValueError("bad stream")
        key = (_i(s["kind"], 4), s.get("bits"), s.get("dtype"))
        if key in keys:
            raise ValueError("duplicate stream")
        keys.append(key)
        if s["kind"] in (0, 3):  # sub-scales are stored as levels are (as sub - 1 - qmax)
            bits = _i(s["bits"], 8)
            size = -(-n * bits // 8) if s["layout"] == 2 else n
            if bits < 2 or lay not in (2, 3):
                raise ValueError("bad levels stream")
        else:
            ok = ("float16", "float32") if s["kind"] == 1 else DT
            dt = OD if s["kind"] == 4 else np.dtype(DT[s["dtype"]]) if type(s["dtype"]) is str and s["dtype"] in ok else None
            if dt is None or lay not in (0, 1):
                raise ValueError("bad stream dtype or layout")
            size = n * dt.itemsize
        raw = blocks[bi][fill[bi]:fill[bi] + size]
        fill[bi] += size
        if len(raw) != size:
            raise ValueError("stream overruns its block")
        if s["kind"] in (0, 3):
            arrays.append(_levels(raw, bits, n, lay == 2))
        elif s["layout"] == 1:  # byte planes back to elements
            arrays.append(np.frombuffer(np.frombuffer(raw, np.uint8).reshape(dt.itemsize, n).T.tobytes(), dt, n))
        else:
            arrays.append(np.frombuffer(raw, dt, n))
        if s.get("dtype") == "bool" and n and arrays[-1].max() > 1:
            raise ValueError("bool stream holds a byte other than 0/1")
        used.append(0)
    if fill != [len(x) for x in blocks]:
        raise ValueError("streams do not fill their blocks")
    sd, total, out = {}, 0, 0

    def take(g, o, n):
        if _i(g, len(arrays) - 1) is None or _i(o) != used[g] or o + n > len(arrays[g]):
            raise ValueError("tensors must tile their streams")
        used[g] += n
        return arrays[g][o:o + n]

    for e in h["tensors"]:
        _keys(e, ("name", "shape", "dtype", "spec", "digest", "group", "offset"), OPT)
        name, shape = e["name"], e["shape"]
        if type(name) is not str or not 0 < len(name) <= L["name"] or not name.isprintable() or name in sd:
            raise ValueError(f"bad tensor name {ascii(name)[:80]}")
        if type(shape) is not list or len(shape) > L["ndim"]:
            raise ValueError(f"{name}: bad shape")
        numel = 1
        for d in shape:
            numel *= _i(d, L["numel"])
        total += numel
        if type(e["dtype"]) is not str or e["dtype"] not in DT:
            raise ValueError(f"{name}: bad dtype")
        out += numel * np.dtype(DT[e["dtype"]]).itemsize
        if total > L["numel"] or out > L["out"]:
            raise ValueError(f"{name}: too many elements or bad dtype")
        if not (type(e["spec"]) is str and SPEC.fullmatch(e["spec"]) and type(e["digest"]) is str and HEX.fullmatch(e["digest"])) or \
                ("lqer" in e) != ("+lqer" in e["spec"]) or ("outliers" in e) != ("+out" in e["spec"]):
            raise ValueError(f"{name}: bad spec or digest")
        dtype, sp, st = getattr(torch, e["dtype"]), e["spec"], h["streams"][_i(e["group"], len(arrays) - 1)]
        fl = e["dtype"] in ("float32", "float16", "bfloat16", "float64")
        if sp[:3] == "int":  # levels of its width, with scales; 2-D: one fp16 per row, else one fp32
            sc = h["streams"][_i(e.get("scales"), len(arrays) - 1)]
            want = (0, int(sp[3]), 1, "float16" if len(shape) == 2 else "float32", True)
            if (st["kind"], st.get("bits"), sc["kind"], sc["dtype"], fl) != want or ("rows" in e) != (len(shape) == 2):
                raise ValueError(f"{name}: int tensor does not match its streams")
        elif set(OPT) & e.keys() or st["kind"] != 2 or (sp != "exact" and not fl) or \
                st["dtype"] != {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(sp, e["dtype"]):
            raise ValueError(f"{name}: passthrough tensor does not match its stream")
        v = torch.from_numpy(take(e["group"], e["offset"], numel).copy())
        if "scales" in e:  # levels * scale in fp32 (per row fp16 scales, else one fp32 scale)
            r = _i(e["rows"], numel) if "rows" in e else None
            g = e.get("scale_group")  # group-wise scales: rows x ceil(cols / g) of them, row-major
            gp = re.findall(r":g(\d+)s?(\d?)", sp)  # [(N, k)]; k-bit sub-scales x one fp16 scale a row
            k, sk = int(gp[0][1] or 0) if gp else 0, set(OPT[4:6])
            if [g, r is not None] != ([int(gp[0][0]), True] if gp else [None, r is not None]) or sk & e.keys() != (sk if k else set()):
                raise ValueError(f"{name}: scale_group or subscales do not match its spec")
            if r is not None and (len(shape) != 2 or r != shape[0]):
                raise ValueError(f"{name}: rows must be shape[0]")
            n = r * (-(-shape[1] // g)) if g else 0
            sc = take(e["scales"], e["scale_offset"], 1 if r is None else n if g and not k else r)
            if k:  # group scale = float32(row scale) * float32(sub); sub = stored level + 2^(k-1), in 1..2^k-1
                if (lambda u: (u["kind"], u.get("bits")))(h["streams"][_i(e["subscales"], len(arrays) - 1)]) != (3, k):
                    raise ValueError(f"{name}: sub-scales not in the {k}-bit sub-scales stream")
                u = torch.from_numpy(take(e["subscales"], e["subscale_offset"], n).astype(np.float32) + (1 << k - 1))
                s = torch.from_numpy(sc.copy()).float().view(r, 1) * u.view(r, -1)
            if g is not None:
                s = s if k else torch.from_numpy(sc.copy()).float().view(r, -1)
                t = v.float().view(r, shape[1]) * s.repeat_interleave(g, dim=1)[:, : shape[1]]
            elif r is not None:
                t = v.float().view(r, shape[1]) * torch.from_numpy(sc.copy()).float().view(-1, 1)
            else:
                t = v.float() * float(sc[0])
            if "lqer" in e:  # t += a_j b_j^T in fp32, j in order (A^T, B: levels * row scale)
                q = _keys(e["lqer"], ("rank", "bits", "offset", "scale_offset"))
                n, lb = _i(q["rank"], min(shape)), (0, _i(q["bits"], 8), None)
                if r is None or k or not sp.endswith(f"+lqer{n}") or lb not in keys:
                    raise ValueError(f"{name}: bad lqer")
                f = torch.from_numpy(take(keys.index(lb), q["offset"], n * sum(shape)) * np.repeat(take(e["scales"], q["scale_offset"], 2 * n)
                                     .astype("f4"), np.repeat(shape, n)))
                a, f = f[:n * r].view(n, r), f[n * r:].view(n, -1)
                for j in range(n):
                    t = t + a[j, :, None] * f[j]
            if "outliers" in e:  # t.flat[i] = fp16 value; i = cumsum(deltas), strictly increasing, < numel
                q, n = _keys(e["outliers"], ("count", "offset")), -(-numel * int(sp.split("+out")[1]) // 1000)
                p = take(keys.index((4, None, None)) if _i(q["count"]) == n and (4, None, None) in keys else -1, q["offset"], n)
                i = np.cumsum(p["d"], dtype=np.int64)
                if n and (p["d"][1:].min(initial=1) < 1 or i[-1] >= numel):
                    raise ValueError(f"{name}: bad outliers")
                t = t.reshape(-1).clone()
                t[torch.from_numpy(i)] = torch.from_numpy(p["v"].astype("f4"))
        elif h["streams"][e["group"]]["dtype"] == "bfloat16":
            t = v.view(torch.bfloat16)
        else:
            t = v
        t = t.to(dtype).reshape(shape).contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if numel else b""  # (an empty view has stride 0)
        if check and hashlib.sha256(raw).hexdigest() != e["digest"]:
            raise ValueError(f"{e['name']}: tensor differs from what the packer wrote")
        sd[name] = t
    if used != [len(a) for a in arrays]:
        raise ValueError("tensors do not fill their streams")
    return sd


if __name__ == "__main__":
    import sys
    sd = load(sys.argv[1])
    print(f"{len(sd)} tensors, {sum(t.numel() for t in sd.values()):,} params")
'''


# python-minifier's settings for `minify=True`: locals and private globals renamed, docstrings and annotations
# dropped, `load` (the API) kept. A transform at export time, so DECODER_SOURCE stays the readable program.
MINIFY_OPTIONS: dict[str, Any] = {"remove_literal_statements": True, "rename_globals": True, "preserve_globals": ["load"]}


def decoder_source(minify: bool = False) -> str:
    """The standalone decoder's Python source; `minify=True` gives the same program in about 40% fewer bytes
    (needs the python-minifier package: `pip install 'golfpack[minify]'`; its output is valid for the Python
    version that ran it, so minify with the Python the submission runs on)."""
    if not minify:
        return DECODER_SOURCE
    try:
        import python_minifier
    except ImportError:
        raise UsageError("a minified decoder needs python-minifier: pip install python-minifier "
                         "(or 'golfpack[minify]'), or export the readable one", param="minify") from None
    return python_minifier.minify(DECODER_SOURCE, **MINIFY_OPTIONS) + "\n"


def export_decoder(path: str | os.PathLike[str], minify: bool = False) -> int:
    """Write the standalone decoder to `path` (atomically; minified with `minify=True`); returns its size in bytes."""
    data = decoder_source(minify).encode("utf-8")
    write_bytes_atomic(path, data)
    return len(data)


__all__ = ["MINIFY_OPTIONS", "decoder_source", "export_decoder"]

import numpy as np
import pytest

from golfpack.errors import GolfpackError
from golfpack.formats.shards import (
    HEADER_BYTES,
    SHARD_MAGIC,
    load_tokens,
    read_shard,
    read_shard_header,
    write_shard,
)


def test_roundtrip_and_golden_header(tmp_path):
    p = tmp_path / "s.bin"
    write_shard(p, [1, 2, 65535, 0])
    raw = p.read_bytes()
    assert len(raw) == HEADER_BYTES + 8
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [SHARD_MAGIC, 1, 4] and not header[3:].any()
    assert raw[HEADER_BYTES:] == bytes([1, 0, 2, 0, 255, 255, 0, 0])
    assert read_shard(p).tolist() == [1, 2, 65535, 0]
    assert read_shard(p, mmap=False).tolist() == [1, 2, 65535, 0]


def test_real_val_shard(val_shard):
    toks = read_shard(val_shard)
    assert toks.size == 1_040_298
    assert int(toks[0]) == 1 and int(toks.max()) == 1023
    assert int((toks == 1).sum()) == 902


def test_load_tokens_concatenates_sorted_and_caps(tmp_path):
    write_shard(tmp_path / "x_001.bin", [3, 4])
    write_shard(tmp_path / "x_000.bin", [1, 2])
    assert load_tokens(tmp_path / "x_*.bin").tolist() == [1, 2, 3, 4]
    assert load_tokens(tmp_path / "x_*.bin", max_tokens=3).tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:100], "truncated header"),
        (lambda b: b[:-2], "truncated: header word 2 says 3 tokens"),
        (lambda b: b + b"\0\0", "trailing bytes"),
        (lambda b: (123).to_bytes(4, "little") + b[4:], "bad magic 123 in header word 0"),
        (lambda b: b[:4] + (7).to_bytes(4, "little") + b[8:], "unsupported version 7 in header word 1"),
    ],
)
def test_bad_shards_name_file_and_field(tmp_path, mutate, message):
    good = tmp_path / "good.bin"
    write_shard(good, [5, 6, 7])
    bad = tmp_path / "bad.bin"
    bad.write_bytes(mutate(good.read_bytes()))
    with pytest.raises(GolfpackError) as e:
        read_shard_header(bad)
    assert message in str(e.value) and "bad.bin" in str(e.value)


def test_missing_and_unmatched(tmp_path):
    with pytest.raises(GolfpackError, match="file not found"):
        read_shard(tmp_path / "nope.bin")
    with pytest.raises(GolfpackError, match="no shard files match"):
        load_tokens(str(tmp_path / "none_*.bin"))


def test_write_rejects_out_of_range(tmp_path):
    with pytest.raises(GolfpackError, match="0..65535"):
        write_shard(tmp_path / "x.bin", [70000])
    assert not list(tmp_path.iterdir())  # nothing half-written

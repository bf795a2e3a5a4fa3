from __future__ import annotations

import numpy as np
import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats.shards import write_shard
from golfpack.trainer.data import DistributedTokenLoader, TokenStream, check_train_shards, shard_max_token


@pytest.fixture()
def counting_shards(tmp_path):
    # Token i has value i % 1000, across three shards of uneven length.
    write_shard(tmp_path / "s_000.bin", np.arange(0, 100) % 1000)
    write_shard(tmp_path / "s_001.bin", np.arange(100, 137) % 1000)
    write_shard(tmp_path / "s_002.bin", np.arange(137, 300) % 1000)
    return tmp_path


def test_stream_crosses_shards_and_wraps(counting_shards):
    files = sorted(counting_shards.glob("s_*.bin"))
    s = TokenStream(files)
    assert s.take(90).tolist() == list(range(90))
    assert s.take(60).tolist() == list(range(90, 150))  # crosses two shard boundaries
    assert s.take(200).tolist() == list(range(150, 300)) + list(range(0, 50))  # wraps to the first shard


def test_ranks_take_disjoint_spans_and_world_size_does_not_change_the_batch(counting_shards):
    files = sorted(counting_shards.glob("s_*.bin"))
    seq, local = 4, 8  # 2 sequences of 4 per micro-batch per rank
    one = DistributedTokenLoader(files, 0, 1, "cpu")
    spans_1 = [one.next_batch(local, seq) for _ in range(4)]  # 1 process, 4 micro-steps
    r0 = DistributedTokenLoader(files, 0, 2, "cpu")
    r1 = DistributedTokenLoader(files, 1, 2, "cpu")
    spans_2 = []
    for _ in range(2):  # 2 processes, 2 micro-steps each
        spans_2 += [r0.next_batch(local, seq), r1.next_batch(local, seq)]
    for (x1, y1), (x2, y2) in zip(spans_1, spans_2):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x, y = spans_1[0]
    assert x.shape == (2, 4) and x.dtype == torch.int64
    assert x.flatten().tolist() == list(range(8)) and y.flatten().tolist() == list(range(1, 9))
    # The second span starts after the first one's extra target token.
    assert spans_1[1][0].flatten().tolist()[0] == 9


def test_check_train_shards_errors(tmp_path, counting_shards):
    with pytest.raises(GolfpackError, match="no shard files match"):
        check_train_shards(str(tmp_path / "nope_*.bin"), 1024)
    with pytest.raises(GolfpackError, match="token id 99 >= vocab_size 64"):
        check_train_shards(str(counting_shards / "s_*.bin"), 64)
    with pytest.raises(GolfpackError, match="also a validation shard"):
        check_train_shards(str(counting_shards / "s_*.bin"), 1024, str(counting_shards / "s_001.bin"))
    write_shard(tmp_path / "fineweb_val_000000.bin", [1, 2, 3])
    with pytest.raises(GolfpackError, match="never train on the val tokens"):
        check_train_shards(str(tmp_path / "fineweb_val_*.bin"), 1024)
    bad = tmp_path / "broken_000.bin"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(GolfpackError, match="truncated header"):
        check_train_shards(str(bad), 1024)
    assert len(check_train_shards(str(counting_shards / "s_*.bin"), 1024)) == 3


def test_later_shard_with_foreign_ids_is_caught_when_reached(tmp_path):
    write_shard(tmp_path / "a_0.bin", [1, 2, 3])
    write_shard(tmp_path / "a_1.bin", [4, 5000])
    s = TokenStream(sorted(tmp_path.glob("a_*.bin")), vocab_size=1024)
    with pytest.raises(GolfpackError, match="different tokenizer"):
        s.take(5)


def test_every_shard_is_checked_at_startup_not_only_the_first(tmp_path):
    write_shard(tmp_path / "t_000.bin", [1, 2, 3])
    write_shard(tmp_path / "t_001.bin", [4, 5, 6])
    write_shard(tmp_path / "t_002.bin", [7] * 50 + [1500] + [8] * 9)  # a bad id deep inside the last shard
    with pytest.raises(GolfpackError) as e:
        check_train_shards(str(tmp_path / "t_*.bin"), 1024)
    msg = str(e.value)
    assert "t_002.bin" in msg and "token id 1500 >= vocab_size 1024" in msg
    assert check_train_shards(str(tmp_path / "t_*.bin"), 1501)[-1].name == "t_002.bin"


def test_shard_max_is_the_same_read_in_chunks(tmp_path):
    ids = np.random.default_rng(0).integers(0, 900, 1000)
    ids[777] = 1023
    write_shard(tmp_path / "m.bin", ids)
    write_shard(tmp_path / "empty.bin", [])
    for chunk in (1, 7, 100, 1000, 1 << 24):
        assert shard_max_token(tmp_path / "m.bin", chunk) == 1023
    assert shard_max_token(tmp_path / "empty.bin") == -1

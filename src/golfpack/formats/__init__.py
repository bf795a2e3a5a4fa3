"""Everything on disk: token shards, raw checkpoints, legacy int8 artifacts and QGv3 artifacts."""

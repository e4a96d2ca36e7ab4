"""Multi-Source Spatial Transformer: align multi-source human images into full-body space and
write `unitedhuman-shard/1` shards (CLI: `mst`)."""

__version__ = "0.1.0"

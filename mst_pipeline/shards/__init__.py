"""The pipeline's output stage: shards in the `unitedhuman-shard/1` format (`writer`: samples,
shards and the manifest, resumable; `rejects`: the failures next to them), their check
(`validate`, `mst validate`) and their contact sheet (`preview`, `mst preview`)."""

"""The contract between `mst_pipeline` (writes shards) and `uh_train` (reads them), and the little
both packages share. Light on purpose: numpy, Pillow, pyarrow and typer only -- never torch, never
a network, never a module of `mst_pipeline`.

* `spec`      -- the shard format `unitedhuman-shard/1` (shards/README.md in executable form)
* `image`     -- opening a sample's image within the spec's bounds, before any pixel is decoded
* `manifest`  -- the per-folder `manifest.parquet`: file name, schema, one row per sample
* `geometry`  -- full-body image space: H, regions, densities, the patch transform T(v,s)
* `atomic`    -- atomic file writes
* `locks`     -- one run per output: run folders and slices of a source's keys, naming the holder
* `unpickle`  -- the one allow-list unpickler (each caller passes its own allow-list)
* `cli_args`  -- argument checks shared by the command lines of both packages

Importing `uh_train.format` imports none of its modules; import the one you need.
"""

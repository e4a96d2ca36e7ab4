"""`mst align`: a folder of images into full-body space and shards (paper §3.1): the settings and
their rules (`settings`), the decisions and samples of one image (`samples`), the run over a
folder (`folder`) and the check pictures of the fits (`overlay`)."""

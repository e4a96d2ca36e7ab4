"""What the training loop (`uh_train.train.train`) needs around it, one job per module:

* `config`: `TrainConfig`, its defaults (from the network presets) and what a resume may change;
* `run_folder`: checkpoints, resume, the log and the sample grid in a run's folder;
* `models`: networks and optimisers, the stage-1 start of stage 2 (teacher), LPIPS, the EMA;
* `distributed`: the process group `torchrun` sets up, gradient averaging;
* `monitor`: step timing, the divergence watch, per-scale statistics, the step log;
* `cli`: the `uh-train` command.
"""

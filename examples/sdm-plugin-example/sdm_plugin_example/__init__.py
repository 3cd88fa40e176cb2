"""An example sdm-bench plugin package: the defense `example-noise` and the attack `example-probe`."""

"""The data layer: loading Bias in Bios shaped corpora, pronoun scrubbing, the four disjoint pools, nested budget
samples, inspection.

Import the submodules (`harness.data.loader`, `.scrub`, `.prepare`, `.budgets`, `.inspect`) directly; this package
file stays light so that importing `harness.data` does not pull in `datasets` or `pyarrow`.
"""

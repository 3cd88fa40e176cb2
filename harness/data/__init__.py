"""The data layer: loading Bias in Bios shaped corpora, pronoun scrubbing, the four disjoint pools, nested budget
samples, inspection.

Import the submodules directly: `harness.data.loader` (`load_corpus`), `.sources` (one class per kind of
data.source), `.corpus` (the `Corpus` record), `.tables` (validation), `.cache`, `.scrub`, `.prepare`, `.budgets`,
`.inspect`. This package file stays light so that importing `harness.data` does not pull in `datasets` or `pyarrow`.
"""

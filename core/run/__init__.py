"""The two folders later stages read: a training run and a sample set, each with one owner.

rundir.py        RunDir: checkpoints, EMA weights, model.json, log
conditioning.py  check_conditioning: does a store's features fit a run (encoder, preprocessing)
sampleset.py     SampleSet: samples.npz + index.jsonl + conds.npy + manifest (format_version)
"""

"""The folders later stages read, each with one owner: a training run, a sample set, an evaluation.

rundir.py        RunDir: checkpoints, EMA weights, model.json, log
conditioning.py  check_conditioning: does a store's features fit a run (encoder, preprocessing)
sampleset.py     SampleSet: samples.npz + index.jsonl + conds.npy + manifest (format_version)
evaldir.py       EvalDir: metrics.json (its schema) / .csv / .md + ranks + manifest; Table 1's folder
"""

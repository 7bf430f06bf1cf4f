"""The folders stages write and later stages read, each with one owner, and the checks between them.

rundir.py        RunDir: checkpoints, EMA weights, model.json, log
models.py        load_model / load_for_sampling: the model a run folder (or a weights file) holds
conditioning.py  check_conditioning: does a store's features fit a run (encoder, preprocessing)
sampleset.py     SampleSet: samples.npz + index.jsonl + conds.npy + manifest (format_version)
evaldir.py       EvalDir: metrics.json (its schema) / .csv / .md + ranks + manifest; Table 1's folder
priordir.py      the prior's folder: prior.safetensors + prior.json (rcdm train-prior)
lock.py          one writer per output folder
"""

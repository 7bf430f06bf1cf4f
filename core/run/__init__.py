"""The two folders later stages read: a training run and a sample set, each with one owner.

    rundir.py      RunDir: checkpoints, EMA weights, model.json; the store-fits-run check
    sampleset.py   SampleSet: samples.npz + index.jsonl + conds.npy + manifest (format_version)
"""

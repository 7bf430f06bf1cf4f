"""Images in: image sources (folders, lists, webdataset tars), encoder preprocessing, the demo set.

images.py       ImageSource over a folder tree, a list file or tars; decoding
preprocess.py   Preprocess (the encoder input rule), ADM's center crop, model range
demo.py         the embedded demonstration set, built offline
"""

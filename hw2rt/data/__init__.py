"""Data at the bottom layer: anything above may read it, it reads nothing above (io.py, errors.py only).

- `images.py`: the one image decoder and its one resize rule (training, `classify`, `eval-digits`).
- `layout.py`: the assignment's `hw2_data/` layout: domain folders, splits, the digit and face datasets.
- `sources.py` and `synth.py`: the offline stand-in `hw2_data/` tree (`hw2rt data synth`).
"""

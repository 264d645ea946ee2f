"""The `llava` command line (`main.py`): the one layer that may import training, evaluation and serving alike."""

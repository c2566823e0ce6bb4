"""One command-line module per ``dvc.yaml`` stage: parse arguments, load params, call the library."""

import os

# Quiet TensorFlow's C++ start-up chatter for the CLIs; users can still override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

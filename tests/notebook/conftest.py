"""The notebook's pieces: the MNIST loader, the batch feeder, the model factory
and the logger. They are backend-independent NumPy and Keras code, so they run on
TensorFlow; the model's layout (channels first on PyTorch) is checked on every
backend.
"""

from helpers import BACKENDS, left_out

collect_ignore = left_out(__file__, ("tensorflow",), {"test_models_layout.py": BACKENDS})

"""The experiment harness and the example scripts, as users run them: the
`keras-bn` command, checkpoints, interrupts, run locks, the multi-process
examples. The harness runs on TensorFlow (the notebook's backend).
"""

from helpers import left_out

collect_ignore = left_out(__file__, ("tensorflow",))

"""The model tools' tests: the graph walker, folding, conversion, freezing,
recalibration, statistics and porting, on every backend and on the test bed of
`tests/zoo.py`.
"""

from helpers import BACKENDS, left_out

collect_ignore = left_out(__file__, BACKENDS)

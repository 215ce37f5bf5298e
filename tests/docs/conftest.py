"""The documentation: every snippet of the site and the README run, the links,
the widths of code and tables. Run once, on TensorFlow.
"""

from helpers import left_out

collect_ignore = left_out(__file__, ("tensorflow",))

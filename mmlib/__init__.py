"""mmlib: the Maximum Margin loss (Kang, Vu, Yoo, ICIP 2021) and the LDAM-DRW protocol."""

import time

__version__ = "0.1.0"
STARTED = time.time()  # when this process imported mmlib, before torch: the command line's --time-limit counts from it

"""mmlib: the Maximum Margin loss (Kang, Vu, Yoo, ICIP 2021) and the LDAM-DRW protocol."""

__version__ = "0.1.0"

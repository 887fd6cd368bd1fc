"""metarec: meta-learned cold-start recommendation."""
__version__ = "0.1.0"

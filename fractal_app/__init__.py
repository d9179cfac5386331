"""fractal-app: a Golem Task API application that renders fractals across many machines."""

__version__ = "0.1.0"

"""ckptsurgeon: PyTorch checkpoint surgery and weight transfer.

Importing the package imports neither torch nor numpy: inspecting a checkpoint must stay fast.
"""

__version__ = "0.1.0"

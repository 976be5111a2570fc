"""Small stand-in architectures for demos and tests: a YOLOv7 with the key names of a real checkpoint,
the official YOLOv7 repository's flat ``model.N`` layout, and the attention blocks people insert.

Importing this package imports torch (the top-level ``ckptsurgeon`` package does not).
"""

from ckptsurgeon.examples.attention import CBAM, ECA, SEBlock, make_attention
from ckptsurgeon.examples.yolov7 import YoloBody, build_yolov7

__all__ = ["CBAM", "ECA", "SEBlock", "YoloBody", "build_yolov7", "make_attention"]

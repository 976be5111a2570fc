"""Small stand-in architectures for demos, tests and the shipped recipes, each with the module names of the
real one: a YOLOv7 with the key names of ``yolov7_weights.pth`` (``yolov7``), the official YOLOv7
repository's flat ``model.N`` layout (``official_yolov7``), a torchvision-style ResNet-50 (``resnet``), a
detector holding it under ``backbone.body.`` (``detector``), a timm-style ViT (``vit``), and the attention
blocks people insert (``attention``). ``resnet:build``, ``detector:build``, ``vit:build`` and
``yolov7:build_yolov7`` are ``--model`` targets, e.g. ``--model ckptsurgeon.examples.resnet:build``.

Importing this package imports torch (the top-level ``ckptsurgeon`` package does not).
"""

from ckptsurgeon.examples.attention import CBAM, ECA, SEBlock, make_attention
from ckptsurgeon.examples.yolov7 import YoloBody, build_yolov7

__all__ = ["CBAM", "ECA", "SEBlock", "YoloBody", "build_yolov7", "make_attention"]

"""Bridges to the tools people label and map with (``pip install unet-resnet[integrations]``).

``label_studio``: Label Studio's ML-backend protocol (labeling configs, brush RLE, polygons,
task images); the HTTP routes live in ``serve/label_studio.py``. ``cvat``: a CVAT
auto-annotation function module. ``shapes``: masks to polygons, shared by both. QGIS
(Deepness) metadata is part of the ONNX export (``export.py``), the Open Inference Protocol
part of the service (``serve/oip.py``).
"""

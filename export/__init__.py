"""safepolicy export: trained actors to versioned, self-describing ONNX policy artifacts.

The torch-free parts the server and audit use live in :mod:`export.artifact` (metadata, audit
verdict, ``load_policy``) and :mod:`export.repository` (``ModelRepository``); the exporter itself
(:mod:`export.onnx_export`, which needs torch) is imported only when asked for, so
``import export.artifact`` stays light.
"""

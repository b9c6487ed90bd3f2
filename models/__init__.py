"""tie-lite's shipped default models, installed as the package `tie_lite_models` (pyproject.toml).

Only their runtime files are installed (each onnx/ folder, and policy/); tie_lite.py finds them
here when it is not run from a checkout. models/README.md says how they were trained and exported.
"""

"""r1kit's bottom layer: what every other package may use, and which imports nothing else of the project.

``core.registry`` (the one registry idiom), ``core.files`` (atomic writes), ``core.configio`` (strict
YAML-to-dataclass mapping and ``ConfigError``), ``core.metrics`` (metrics that declare their reduction across
processes) and ``core.hf`` (what the decode and the training forward both need to know about a transformers
model). Layers, bottom to top: ``core`` -> ``rewards`` -> ``rollouts`` -> ``rl``; ``tests/test_layers.py``
fails on any import that points up.
"""

"""sarmae: SAR object detection with masked auto-encoder pre-training.

Pipeline (the paper's Figure 1): ``data`` -> ``models`` (vit, mae, vitdet) ->
``train`` (pretrain, finetune) -> ``infer`` (predict, scenes, evaluate)
-> ``experiments`` (demo, tables, probes) -> ``cli``.
"""

__version__ = "0.1.0"

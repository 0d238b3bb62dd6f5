"""Models: the ViT encoder (``vit``), its MAE pre-training wrapper (``mae``) and the detector (``vitdet``)."""

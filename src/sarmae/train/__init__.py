"""Training: MAE pre-training and ViTDet fine-tuning on one run-folder skeleton (Lightning)."""

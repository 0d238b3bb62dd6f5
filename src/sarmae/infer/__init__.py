"""Inference: loading a detector, predicting chips and large scenes, geo outputs, COCO evaluation."""

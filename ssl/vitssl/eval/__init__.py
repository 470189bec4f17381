"""Evaluation of encoders: features, kNN, linear probes, classification metrics and their figures."""
from vitssl.eval.embeddings import split_features, standardise, stream_split
from vitssl.eval.knn import knn_predict
from vitssl.eval.linear import LinearProbeResult, train_linear_probe
from vitssl.eval.metrics import ClassificationReport, classification_report

__all__ = ["ClassificationReport", "LinearProbeResult", "classification_report", "knn_predict",
           "split_features", "standardise", "stream_split", "train_linear_probe"]

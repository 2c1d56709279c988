"""A trained model outside the trainer: exported to ONNX or TorchScript (checked against PyTorch), and loaded back, from a checkpoint or an exported file, as the function predict runs."""

"""From a fine-tuned model to a served version: ONNX export, CPU engines, parity checks and the
model repository writer."""

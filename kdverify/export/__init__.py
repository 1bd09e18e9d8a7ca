"""Shipping a student: ONNX export checked against PyTorch (`onnx.export_model`), int8 quantisation checked
against fp32 (`quantize`), and the ONNX Runtime checks both use (`validate`)."""

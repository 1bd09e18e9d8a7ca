"""kdverify: knowledge-distillation claims as executable checks, and students shipped as verified ONNX."""

__version__ = "0.1.0"

"""golfpack: turn a trained small GPT into the best-scoring artifact under a hard byte cap.

Data path: state dict -> policy -> quantized tensors -> grouped streams -> codec -> bytes
-> (fresh process) -> tensors -> model -> score.
"""

__version__ = "0.1.0"

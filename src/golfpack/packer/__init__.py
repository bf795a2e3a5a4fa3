"""The packer: policy -> quantized tensors -> grouped streams -> codec -> bytes, under a byte budget."""

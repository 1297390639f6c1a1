"""clipsearch: the library shared by the encoder, indexer, gateway and training.

- `checkpoint`: load a CLIP checkpoint (safetensors only) and fingerprint its weights.
- `preprocess`: the one path from image or sketch bytes to model input.
- `embedder`: L2-normalised text and image embeddings from a loaded model.
- `acceleration`, `onnx_text`: CPU speed-ups (bf16/int8 modes; the text tower on ONNX Runtime).
- `batching`: micro-batching of concurrent requests (the encoder's forward passes, the gateway's calls).
- `v1`: generated gRPC code for the `clipsearch.v1` contracts (scripts/gen_protos.py).
"""

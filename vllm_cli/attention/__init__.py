"""Paged attention: the backend interface, its implementations, the selector, and the Attention layer.

- `backend`: what a step hands attention (SeqBatchInfo, ForwardContext) and the AttentionBackend
  protocol (build_metadata once per step, forward once per layer).
- `torch_backend`: gather + SDPA, any device (the reference for the others).
- `cpu_backend`: the torch backend with kernels/cpu.py's C kernels for the KV write and the decode group.
- `triton_backend`: the Triton kernels (CUDA; on the CPU only under TRITON_INTERPRET=1).
- `selector`: get_attention_backend, the one place the backend is chosen.
- `layer`: Attention, the nn.Module every native model's attention is: qkv split, rotary or ALiBi,
  KV-cache write and attend.

A package of its own (not under model_executor/) because both sides of a step use it: the model
runner builds the metadata, the model layers attend with it.
"""

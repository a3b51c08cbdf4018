"""`forge serve`: one base model, many persona LoRA adapters, one OpenAI-compatible endpoint.

engine.py (the model, batched generation with per-row sampling), registry.py (known adapters, the
checks at load, the LRU bound), batcher.py (the micro-batcher and its bounded queue), app.py (the
FastAPI routes), vllm.py (the `vllm serve` command for GPU sites).
"""

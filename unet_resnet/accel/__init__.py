"""CPU acceleration, apart from the domain code: the inference fast path (BatchNorm folding,
bf16 weights, oneDNN packing chosen per layer by measurement: ``fastpath``, ``onednn``,
``trace``), the training path's GEMM layers and fused optimiser (``gemm_conv``, ``optim``), and
freed memory kept for reuse (``memory``). ``inference/`` and ``training/`` use them; they know
nothing of either (the import contract in pyproject.toml says so).
"""

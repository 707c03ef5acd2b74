"""Model-based autotuning of the fused-MoE Triton kernel's config, one Optuna study per batch size.

vLLM and SGLang tune by timing every config of a 1920-config grid at every batch size M (2644 s, about 44
minutes, per M for Mixtral TP2 on an H100: sglang PR #29484, profiles/reference/published_numbers.yaml). Here a
sampler (multivariate TPE by default, GP selectable: ``tuner.autotune.samplers``) proposes configs from the same
grid (``tuner.autotune.space``), each proposal is measured, and the study stops after ``trials`` measurements or
when the best has not improved for ``patience`` of them. The study is seeded (``enqueue_trial``) with the vLLM
config shipped for the nearest shape and with our batch-size default, so it never ends worse than either.

Modules, in the order a run uses them:

* :mod:`.spec`: ``KernelTuneSpec``, the frozen, self-checking definition of a run (:mod:`.errors`: its error);
* :mod:`.routing`: R fresh top-k draws per timed repeat (trace, uniform or Dirichlet-skewed);
* :mod:`.problem`: the device tensors of one (E, N, K, M) problem;
* :mod:`.measure`: timing one config (CUDA graphs; wall clock on the interpreter);
* :mod:`.seeds`: the shipped vLLM config and our default, enqueued first;
* :mod:`.study`: the trial loop, what a counted trial is, the exact budget;
* :mod:`.device`: backend checks, device name, shared-memory limit, visible GPUs;
* :mod:`.workers`: worker processes and :func:`~.workers.autotune_kernel`, the entry point;
* :mod:`.results`: each study's outcome and the vLLM-format JSON file.

Dimension legend: M tokens in the batch, E experts, N intermediate size per expert (vLLM's N: w1 is [E, 2N, K]),
K hidden size, k top-k, R routing draws (one per timed repeat).
"""

"""Helper process for the storage tests (not a test module): one worker of a shared kernel-config study.

Runs ``tuner.autotune.kernel.study.tune_loop`` on ``--storage`` / ``--study`` with a cheap deterministic objective (a
smooth function of the config, plus ``--sleep`` seconds of "measuring"), so several processes contend for the
same budget exactly as ``moesim autotune kernel --workers N`` processes do, without a GPU.
"""

from __future__ import annotations

import argparse
import math
import time

# The shared-memory filter the workers apply (KB per block): the h100-sxm profile's limit.
SMEM_LIMIT_KB = 227


def objective(config: dict) -> float:
    # Smooth bowl with its minimum at BM=64, BN=128, BK=128, G=16, 4 warps, 4 stages (us).
    return 100.0 + sum(
        abs(math.log2(config[k] / v)) * w
        for k, v, w in (
            ("BLOCK_SIZE_M", 64, 9),
            ("BLOCK_SIZE_N", 128, 7),
            ("BLOCK_SIZE_K", 128, 5),
            ("GROUP_SIZE_M", 16, 1),
            ("num_warps", 4, 2),
            ("num_stages", 4, 3),
        )
    )


def main() -> None:
    import optuna

    from tuner.autotune import space as kernel_space
    from tuner.autotune import storage
    from tuner.autotune.kernel.study import tune_loop
    from tuner.autotune.processes import fail_stale_running
    from tuner.autotune.samplers import make_sampler

    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = storage.open_storage(args.storage)
    study = optuna.create_study(
        storage=store,
        study_name=args.study,
        direction="minimize",
        sampler=make_sampler("tpe", args.seed),
        load_if_exists=True,
    )

    def lock():
        return storage.budget_lock(args.storage, args.study)

    with lock():
        fail_stale_running(study, stale_after_s=3600)

    def evaluate(config: dict) -> float:
        time.sleep(args.sleep)
        return objective(config)

    res = tune_loop(study, evaluate, args.trials, None, lambda c: kernel_space.is_feasible(c, SMEM_LIMIT_KB), lock)
    print(f"measured={res.measured} pruned={res.pruned} stopped_by={res.stopped_by}", flush=True)


if __name__ == "__main__":
    main()

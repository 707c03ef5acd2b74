"""``moesim autotune kernel`` and ``moesim autotune capacity``: Optuna searches for kernel and capacity configs.

The heavy imports (optuna, torch, triton, kernels, and tuner beyond its sampler registry) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.options import announce_calibration, calibration_option, check_seed, use_calibration
from tuner.autotune.samplers import sampler_help

KERNEL_EXAMPLE = (
    "moesim autotune kernel --E 8 --N 7168 --K 4096 --top-k 2 --ms 1,64,1024 --trials 120 "
    "--trace profiles/traces/mixtral_c4.npz --save-dir tuned/"
)
KERNEL_CPU_EXAMPLE = (
    "moesim autotune kernel --backend interpret --E 4 --N 32 --K 64 --ms 4 --trials 6 --save-dir /tmp/cfg"
)
CAPACITY_EXAMPLE = (
    "moesim autotune capacity --model olmoe-1b-7b --cluster dgx-h100 --trace profiles/traces/olmoe_c4.npz "
    "--trials 300 --max-drop 0.01 -o front.json"
)


def _parse_ms(text: str) -> tuple[int, ...]:
    from moesim.errors import field_error

    try:
        ms = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise field_error("--ms", "value", f"expected comma-separated batch sizes, got {text!r}") from None
    return ms  # KernelTuneSpec checks the values


# The kernel spec's fields as this command spells them, for KernelSpecError messages.
KERNEL_FLAGS = {
    "E": "--E",
    "N": "--N",
    "K": "--K",
    "top_k": "--top-k",
    "dtype": "--dtype",
    "ms": "--ms",
    "trials": "--trials",
    "patience": "--patience",
    "sampler": "--sampler",
    "seed": "--seed",
    "backend": "--backend",
    "routing": "--routing",
    "trace": "--trace",
    "trace_layer": "--trace-layer",
    "warmup": "--warmup",
    "repeats": "--repeats",
    "storage": "--storage",
    "gpu": "--gpu",
    "workers": "--workers",
}
# Fields whose messages read ``FLAG: value: PROBLEM`` (the rest: ``FLAG: PROBLEM``, or ``PATH: FLAG: PROBLEM``
# when the message names a file).
_VALUE_FIELDS = frozenset({"E", "N", "K", "top_k", "dtype", "ms", "patience", "seed", "repeats"})


def _with_flags(exc, ms_text: str):
    """The ``KernelSpecError`` ``exc`` with the spec field spelled as this command's flag."""
    from moesim.errors import SpecError, field_error
    from tuner.autotune.kernel.errors import SOURCE

    flag = KERNEL_FLAGS.get(exc.field)
    if flag is None:
        return exc
    problem = exc.problem_with(lambda name: KERNEL_FLAGS.get(name, name))
    if exc.field == "ms":  # the batch sizes as typed, not as parsed
        problem = f"batch sizes must be >= 1, got {ms_text!r}"
    if exc.source != SOURCE:
        return field_error(exc.source, flag, problem)
    if exc.field in _VALUE_FIELDS:
        return field_error(flag, "value", problem)
    return SpecError(f"{flag}: {problem}")


def _storage_option(help_text: str):
    """``--storage URL``: any ``tuner.autotune.storage`` URL (journal:///f.log, f.log, sqlite:///f.db, postgresql://...)."""
    return typer.Option(None, "--storage", help=help_text, show_default=False)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        name="autotune",
        help=(
            "Tune fused-MoE kernel configs (Optuna TPE on vLLM's grid) or per-layer capacity factors "
            f"(NSGA-II on latency vs drops).\n\nExample: {KERNEL_EXAMPLE}"
        ),
        no_args_is_help=True,
    )

    @sub.command(
        "kernel",
        help=(
            "Tune the fused-MoE Triton kernel's config per batch size M with an Optuna study each, resumable "
            "from storage, and write vLLM-format JSON (loadable through VLLM_TUNED_CONFIG_FOLDER).\n\n"
            "Studies live in an embedded journal file under the user cache dir unless --storage URL is given "
            "(e.g. postgresql+psycopg2://user@host/db for workers on many hosts). --trials counts measured "
            "configs per M, exactly, across workers and restarts (journal, sqlite and PostgreSQL storages).\n\n"
            f"Example: {KERNEL_EXAMPLE}\n\nWithout a GPU (tests of the loop only): {KERNEL_CPU_EXAMPLE}"
        ),
        epilog=f"Example: {KERNEL_EXAMPLE}",
    )
    def kernel(
        E: int = typer.Option(..., "--E", help="Number of experts (on this GPU).", show_default=False),
        N: int = typer.Option(
            ..., "--N", help="Intermediate size per expert and shard (vLLM's N; w1 is [E, 2N, K]).", show_default=False
        ),
        K: int = typer.Option(..., "--K", help="Hidden size.", show_default=False),
        top_k: int = typer.Option(2, "--top-k", help="Experts per token."),
        dtype: str = typer.Option("bf16", "--dtype", help="bf16 or fp16."),
        ms: str = typer.Option("1,64,1024", "--ms", help="Comma-separated batch sizes, one study each."),
        trials: int = typer.Option(100, "--trials", help="Measured configs per M (exact)."),
        patience: int = typer.Option(
            40, "--patience", help="Stop an M after this many trials without a new best (0: off)."
        ),
        sampler: str = typer.Option("tpe", "--sampler", help=sampler_help()),
        seed: int = typer.Option(None, "--seed", help="Sampler seed (default: random)."),
        trace: Path = typer.Option(
            None,
            "--trace",
            help="moesim routing trace: timed routings are drawn from its real top-k choices.",
            show_default=False,
        ),
        trace_layer: int = typer.Option(
            None, "--trace-layer", help="Model layer of the trace to use (default: the first recorded)."
        ),
        routing: str = typer.Option(
            "uniform", "--routing", help="Without --trace: uniform or dirichlet:ALPHA (small ALPHA = skewed)."
        ),
        warmup: int = typer.Option(5, "--warmup", help="Eager calls before the CUDA graph is captured."),
        repeats: int = typer.Option(
            20, "--repeats", help="Timed graph replays of 10 calls each (median; fresh routing every call)."
        ),
        storage: str = _storage_option("Optuna storage URL (default: journal file in the cache dir)."),
        workers: int = typer.Option(1, "--workers", help="Worker processes, one per visible GPU, sharing the studies."),
        gpu: str = typer.Option(
            None, "--gpu", help="GPU profile slug for the shared-memory filter (default: from the device name)."
        ),
        backend: str = typer.Option(
            "cuda",
            "--backend",
            help="cuda, or interpret (Triton interpreter on CPU: tiny shapes, no meaningful timing).",
        ),
        save_dir: Path = typer.Option(
            None, "--save-dir", help="Write E=..,N=..,device_name=...json here.", show_default=False
        ),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    ) -> None:
        import sys

        from rich.console import Console

        from cli.autotune_tables import results_table
        from tuner.autotune.kernel.device import check_backend, device_label
        from tuner.autotune.kernel.errors import KernelSpecError
        from tuner.autotune.kernel.results import results_json
        from tuner.autotune.kernel.spec import KernelTuneSpec
        from tuner.autotune.kernel.workers import autotune_kernel

        ms_t = _parse_ms(ms)
        try:
            spec = KernelTuneSpec(
                E=E,
                N=N,
                K=K,
                top_k=top_k,
                dtype=dtype,
                ms=ms_t,
                trials=trials,
                patience=None if patience == 0 else patience,  # 0: off
                sampler=sampler,
                seed=seed,
                backend=backend,
                routing=routing,
                trace=str(trace) if trace else None,
                trace_layer=trace_layer,
                warmup=warmup,
                repeats=repeats,
                storage=storage,
                gpu=gpu,
            )
            check_backend(backend)  # HardwareError (exit 2) without CUDA unless --backend interpret
            err = Console(stderr=True)
            results = autotune_kernel(
                spec,
                workers=workers,
                save_dir=str(save_dir) if save_dir else None,
                console=err,
                show_progress=not json_out or err.is_terminal,
            )
        except KernelSpecError as exc:
            raise _with_flags(exc, ms) from None
        device = device_label(backend)
        if json_out:
            print(results_json(results, spec, device))
            return
        out = Console()
        out.print(results_table(results, f"fused MoE E={E} N={N} K={K} top-{top_k} {dtype} on {device}"))
        if save_dir:
            from kernels.configs import config_file_name

            out.print(f"wrote {save_dir / config_file_name(E, N, device, None)}")
        sys.stdout.flush()

    @sub.command(
        "capacity",
        help=(
            "Search per-layer capacity factors (1.0-4.0 or dropless) and drop policies with NSGA-II on two "
            "objectives from the simulator: step latency and dropped fraction. Prints the Pareto front; "
            f"--max-drop X picks the fastest point dropping at most X. Runs on a CPU.\n\n"
            "Trials are kept in an embedded journal file under the user cache dir (optuna/capacity.log) unless "
            "--storage URL is given (journal:///f.log, sqlite:///f.db, postgresql+psycopg2://user@host/db; "
            "memory: keep nothing). The same command again resumes: --trials counts the study's trials, exactly, "
            "across restarts and workers sharing the storage.\n\n"
            f"Example: {CAPACITY_EXAMPLE}"
        ),
        epilog=f"Example: {CAPACITY_EXAMPLE}",
    )
    def capacity(
        model: str = typer.Option(..., "--model", help="Model slug or YAML path.", show_default=False),
        cluster: str = typer.Option(..., "--cluster", help="Cluster slug or YAML path.", show_default=False),
        trace: str = typer.Option(
            ..., "--trace", help="Trace file, or synthetic spec (zipf:1.2, dirichlet:0.3, uniform).", show_default=False
        ),
        tokens_per_gpu: int = typer.Option(4096, "--tokens-per-gpu", help="Tokens per GPU per step."),
        synthetic_tokens: int = typer.Option(8192, "--synthetic-tokens", help="Tokens of a synthetic trace."),
        trials: int = typer.Option(200, "--trials", help="NSGA-II trials."),
        population: int = typer.Option(40, "--population", help="NSGA-II population size."),
        seed: int = typer.Option(0, "--seed", help="Sampler and synthetic-trace seed."),
        max_drop: float = typer.Option(
            None, "--max-drop", help="Pick the fastest point with dropped fraction <= this (e.g. 0.01)."
        ),
        out: Path = typer.Option(None, "-o", "--out", help="Write the front as JSON here.", show_default=False),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
        calibration: str = calibration_option(),
        storage: str = _storage_option(
            "Optuna storage URL for the study (default: journal file optuna/capacity.log in the cache dir; "
            "memory: keep nothing)."
        ),
    ) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from cli.autotune_tables import front_table
        from moesim.errors import field_error
        from moesim.options import SimOptions
        from moesim.specs import load_cluster, load_model
        from tuner.autotune.capacity.objective import SimulatorObjective
        from tuner.autotune.capacity.search import autotune_capacity, result_json

        if tokens_per_gpu < 1:
            raise field_error("--tokens-per-gpu", "value", f"must be >= 1, got {tokens_per_gpu}")
        check_seed(seed)
        from moesim.fileio import check_outputs
        from tuner.autotune.storage import default_storage_url

        if storage is None:
            storage = default_storage_url("capacity.log")
        elif storage == "memory":
            storage = None

        inputs = {"--model": model, "--cluster": cluster, "--trace": trace, "--calibration": calibration}
        check_outputs({"-o": out}, inputs)
        model_spec = load_model(model)
        cluster_spec = load_cluster(cluster)
        trace_obj = _load_or_synthesize(trace, model_spec, synthetic_tokens, seed)
        cal = use_calibration(calibration, cluster_spec.gpu.slug)
        objective = SimulatorObjective(
            model_spec, cluster_spec, trace_obj, None, SimOptions(tokens_per_gpu=tokens_per_gpu), calibration=cal
        )
        err = Console(stderr=True)
        bar = Progress(
            TextColumn("[bold]capacity[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=json_out and not err.is_terminal,
        )
        task = bar.add_task("", total=trials)

        def on_trial(number: int) -> None:
            # started at the first trial, so an error opening --storage prints no bar before its one line
            if not bar.live.is_started:
                bar.start()
            bar.update(task, completed=min(trials, number + 1))  # number: counts earlier runs' trials too

        try:
            result = autotune_capacity(
                objective,
                trace_obj.layers,
                trials=trials,
                population=population,
                seed=seed,
                max_drop=max_drop,
                storage=storage,
                on_trial=on_trial,
            )
        finally:
            if bar.live.is_started:
                bar.stop()
        result.meta.update(
            {"model": model_spec.slug, "cluster": cluster_spec.slug, "trace": trace, "tokens_per_gpu": tokens_per_gpu}
        )
        result.meta["calibration"] = None if cal is None else cal.describe
        announce_calibration(cal, calibration)
        text = result_json(result)
        if out is not None:
            from moesim.fileio import atomic_write_text

            atomic_write_text(out, text + "\n")
        if json_out:
            print(text)
            return
        console = Console()
        console.print(
            front_table(
                result,
                f"Pareto front: {model_spec.slug} on {cluster_spec.slug}, "
                f"{len(trace_obj.layers)} MoE layers, {trials} trials",
            )
        )
        if result.pick is not None:
            p = result.pick
            console.print(
                f"--max-drop {max_drop:g}: fastest point drops {100 * p.dropped_fraction:.3f}% at "
                f"{p.step_latency_us:.1f} us ({result.dropless.step_latency_us / p.step_latency_us:.3f}x "
                "vs dropless), marked *"
            )
        if out is not None:
            console.print(f"wrote {out}")

    app.add_typer(sub, name="autotune")


def _load_or_synthesize(spec: str, model, tokens: int, seed: int):
    """A trace from a file, or a synthetic one when ``spec`` is ``zipf:A``/``dirichlet:A``/``uniform``."""
    from moesim.errors import field_error
    from moesim.traces.formats import load_trace
    from moesim.traces.synthetic import SKEWS, parse_synthetic, synthetic_trace

    if Path(spec).exists():
        trace = load_trace(spec, model=model)
        trace.check_model(model, spec)
        return trace
    if spec.split(":")[0] in SKEWS:
        params = parse_synthetic(spec)
        params.setdefault("seed", seed)  # a seed inside the spec (zipf:1.2,seed=3) wins over --seed
        return synthetic_trace(model, tokens, **params)
    raise field_error(spec, "--trace", "no such file, and not a synthetic spec (zipf:1.2, dirichlet:0.3, uniform)")

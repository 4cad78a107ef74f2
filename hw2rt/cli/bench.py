"""`hw2rt bench`: the one benchmark harness (hw2rt/bench/) from the command line."""
from pathlib import Path

import click

from hw2rt.bench.runners import RUNNERS
from hw2rt.cli.group import main


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options given on the command line."""
    from click.core import ParameterSource

    parts = [f"hw2rt {ctx.info_name}"]
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE:
            parts.append(p.opts[-1] if p.is_flag else f"{p.opts[0]} {ctx.params[p.name]}")
    return " ".join(parts)


def _csv(text, kind=str):
    try:
        return [kind(x) for x in text.split(",") if x.strip()] if text else None
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list") from None


@main.command()
@click.option("--suite", type=click.Choice(["cpu", "quick", "gpu", "cpu-smoke"]), default="cpu",
              show_default=True,
              help="cpu: make bench; quick: tiny models in under a minute; gpu: the assignment's jobs on a "
                   "CUDA GPU (benchmarks/gpu_check.sh); cpu-smoke: the gpu suite at tiny sizes on the CPU.")
@click.option("--model", type=click.Choice(["digit_unet", "face_unet", "dann", "digit_classifier"]),
              default=None, help="One network (default: the suite's).")
@click.option("--backends", default=None,
              help=f"Comma list of runners (default: the suite's): {', '.join(RUNNERS)}, diffusers. "
                   "torch eager is always included: every ratio is against it.")
@click.option("--batches", default=None,
              help="Comma list of batch sizes for the per-call sweep (default: the suite's).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads of every runner (default: the suite's; 1 on the CPU suites).")
@click.option("--budget", type=click.FloatRange(min=1), default=None,
              help="Seconds for the whole run: sections that would not fit are skipped "
                   "(default: the suite's).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every figure and the environment here (rewritten after every section).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the markdown report here (between the hw2rt-bench markers if the file has them).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of latency against batch per runner.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Export cache (default $HW2RT_CACHE or ~/.cache/hw2rt).")
@click.option("--quick", is_flag=True, help="Short for --suite quick.")
def bench(suite, model, backends, batches, threads, budget, json_path, md_path, plot_path, cache_dir, quick):
    """Time every runner side by side on the jobs' own loops: per-call latency, throughput, memory,
    FLOP/s against the measured peak, end-to-end loops against a diffusers baseline, cost growth.
    Exit status 1 when a section failed."""
    from hw2rt.bench.report import markdown, plot, write_markdown
    from hw2rt.bench.suites import make_suite, run_bench
    from hw2rt.io import check_outputs

    if quick and click.get_current_context().get_parameter_source("suite").name == "COMMANDLINE":
        raise click.UsageError("--quick is short for --suite quick: give one of them")
    check_outputs(("--json", json_path, False), ("--md", md_path, False), ("--plot", plot_path, False))
    chosen = make_suite("quick" if quick else suite, model=model, batches=_csv(batches, int),
                        backends=_csv(backends))
    result = run_bench(chosen, threads=threads, cache_dir=cache_dir, budget_s=budget, json_path=json_path,
                       command=_command_line(click.get_current_context()),
                       log=lambda m: click.echo(m, err=True))
    if md_path:
        write_markdown(result, md_path)
    if plot_path:
        plot(result, plot_path)
    click.echo(markdown(result))
    for p in (json_path, md_path, plot_path):
        if p:
            click.echo(f"wrote {p}", err=True)
    if any(s["status"] == "error" for s in result["sections"].values()):
        raise SystemExit(1)

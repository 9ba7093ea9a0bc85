"""``cxrtriage predict --ray ADDRESS``: the command line's side of a Ray run (is Ray installed, progress with a
total, what the cluster did). The run itself is ``cxrtriage.pipeline.cluster.run``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cxrtriage.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from cxrtriage.pipeline.cluster.run import ClusterProgress
    from cxrtriage.pipeline.config import PredictConfig
    from cxrtriage.pipeline.hooks.base import PredictSummary

INSTALL_HINT = "pip install 'cxrtriage[ray]' (Ray Data: ray[data]==2.60.0)"
_HELP_HINT = INSTALL_HINT.replace("[", "\\[")  # --help is rich markup: brackets escaped
RAY_HELP = (
    "Run the job on a Ray cluster (Ray Data): decoding as CPU tasks, scoring in an actor pool (GPU actors when the "
    "cluster has GPUs), results written as they come to OUT/results.parquet/ and merged into the usual files at the "
    "end, identical to a local run. ADDRESS as Ray takes it: 'local' starts Ray on this machine for the run, 'auto' "
    "joins the cluster this machine belongs to (RAY_ADDRESS, or `ray start`), HOST:PORT or ray://HOST:PORT another. "
    "The inputs must be readable at the same paths on every node; the model and the site files are sent from here. "
    "Running the same command again after a run stopped continues it. Not with --lungs, --heatmaps, --report, "
    "--workers. Needs the ray extra: " + _HELP_HINT + "; see docs/scale.md."
)


def load_cluster_runner() -> Callable[..., PredictSummary]:
    """``run_predict_ray``, or ``ConfigError`` saying how to install Ray when it is missing."""
    try:
        from cxrtriage.pipeline.cluster.run import run_predict_ray
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in ("ray", "pyarrow", "pandas"):
            raise ConfigError(f"--ray needs Ray Data, which is not installed here ({missing} is missing): "
                              f"{INSTALL_HINT}") from exc
        raise
    return run_predict_ray


def predict_on_ray(config: PredictConfig, address: str, err_console: Console) -> PredictSummary:
    """Run ``config`` on the cluster at ``address`` with a progress display; say what the cluster did."""
    run_predict_ray = load_cluster_runner()
    from cxrtriage.pipeline.cluster.run import ClusterOutcome

    with cluster_progress(err_console) as update:
        summary = run_predict_ray(config, address, on_progress=update)
    outcome = summary.outcomes.get("ray")
    if isinstance(outcome, ClusterOutcome):
        p = outcome.plan
        err_console.print(
            f"Ray {p.address}: {p.nodes} node(s), {p.cpus} CPU(s), {p.gpus} GPU(s); up to {p.actors} inference "
            f"actor(s) on {p.device}; {outcome.blocks} block(s) of at most {p.files_per_block} file(s); "
            f"shards in {outcome.shards}", highlight=False, soft_wrap=True)
        if outcome.replaced:
            err_console.print(f"[yellow]replaced {outcome.replaced}[/]", highlight=False, soft_wrap=True)
        if outcome.resumed:
            err_console.print(f"resumed: {outcome.resumed} of {summary.total} rows were done by the earlier, "
                              "unfinished run of this job", highlight=False, soft_wrap=True)
        if outcome.retried_alone:
            err_console.print(f"[yellow]{outcome.retried_alone} input(s) of blocks that failed on the cluster were run "
                              f"again one by one; {outcome.failed_on_cluster} failed alone too (see their rows)[/]",
                              highlight=False, soft_wrap=True)
    return summary


@contextmanager
def cluster_progress(err_console: Console) -> Iterator[Callable[[ClusterProgress], None]]:
    """A rich progress display: files done / total, counts by status, files per second, time left."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total} files"), TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err_console, transient=False,
    )
    task = prog.add_task("scoring on Ray", total=None, counts="")
    started = False

    def update(u: ClusterProgress) -> None:
        nonlocal started
        if not started:
            prog.start()
            started = True
        resumed = f" · resumed {u.resumed}" if u.resumed else ""
        prog.update(task, completed=u.done, total=u.total,
                    counts=f"scored {u.scored} · excluded {u.excluded} · failed {u.failed}{resumed} · "
                           f"{u.rate:.1f} files/s")

    try:
        yield update
    finally:
        if started:
            prog.stop()

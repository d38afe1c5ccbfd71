"""`rtk triton` (write a model repository), `rtk serve` (run a real Triton server on it) and
`rtk triton-env` (make the local server's own Python environment)."""

from __future__ import annotations

import json
import signal

import click

from .common import handled, target_cpu_option


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--repo", default="model_repository", show_default=True, type=click.Path(),
              help="Model repository to create or update.")
@click.option("--name", help="Ensemble name (default: the run folder's name).")
@click.option("--platform", type=click.Choice(["onnxruntime", "tensorrt", "python"]),
              default="onnxruntime", show_default=True,
              help="python: ONNX Runtime inside Triton's Python backend (nvidia-pytriton's server).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--max-batch", type=int, help="max_batch_size (default: the artifact's largest batch).")
@click.option("--artifact", type=click.Choice(["onnx", "fp16", "int8"]),
              help="Classifier artifact (default: INT8 on --kind cpu when its gate trusted it, "
                   "else FP32 model.onnx). An untrusted artifact is refused.")
@click.option("--instances", type=click.IntRange(min=1),
              help="Classifier (and postprocess) instances (default: one per 4 CPU cores on "
                   "--kind cpu, 1 on gpu).")
@click.option("--preprocess-instances", type=click.IntRange(min=1),
              help="Image-decoding instances (default: one per CPU core on --kind cpu, as "
                   "--instances on gpu).")
@click.option("--ort-spin", is_flag=True,
              help="CPU, python platform: let idle ONNX Runtime threads spin-wait: lower latency "
                   "for small inputs, fewer cycles for decoding large JPEGs (default: they sleep).")
@click.option("--queue-delay-us", default=100, show_default=True, help="Dynamic batching delay.")
@click.option("--trt-fp16", is_flag=True,
              help="onnxruntime on GPU: enable the TensorRT execution accelerator in FP16.")
@click.option("--target-tensorrt", help="tensorrt: TensorRT version of the serving host (default: here).")
@click.option("--target-cc", help="tensorrt: GPU compute capability of the serving host (default: here).")
@click.option("--max-queue-size", type=int, default=0, show_default=True,
              help="Requests each model may queue; more are rejected at once (0: unbounded). A "
                   "bound turns off Triton's payload prefetching: use it with --instances 2+.")
@click.option("--queue-timeout-ms", type=int, default=0, show_default=True,
              help="A request that waited this long in a model's queue is rejected (0: never).")
@target_cpu_option
@click.option("--json", "as_json", is_flag=True)
@handled
def triton(run_dir, as_json, **options):
    """Write a Triton model repository for RUN_DIR: classifier, preprocessing, ensemble."""
    import contextlib
    from pathlib import Path

    from ..core.bundle import Bundle
    from ..core.lock import bundle_lock
    from ..triton import RepoOptions, write_repository

    opts = RepoOptions(**options)
    inside = Path(run_dir).resolve() in Path(opts.repo).resolve().parents  # writing into the bundle
    with bundle_lock(run_dir, "rtk triton") if inside else contextlib.nullcontext():
        summary = write_repository(Bundle.load(run_dir), opts,
                                   echo=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    names = summary["names"]
    click.echo(f"Ensemble {names['ensemble']!r} (image bytes in, {names['classifier']} on "
               f"{opts.platform}/{opts.kind}, max batch {summary['max_batch']}) in {summary['repo']}")
    click.echo(f"Classifier artifact: {summary['artifact']}, {summary['instances']} instance(s)"
               + (f" x {summary['threads_per_instance']} ONNX Runtime threads"
                  if summary["threads_per_instance"] else "")
               + f"; {summary['preprocess_instances']} image-decoding instance(s)")
    size, wait = summary["max_queue_size"], summary["queue_timeout_ms"]
    click.echo(f"Queues: {f'at most {size}' if size else 'unbounded'} requests per model, "
               f"{f'rejected after waiting {wait} ms' if wait else 'no wait limit'}")
    click.echo(f"Serve it with: rtk serve {summary['repo']}")


BACKEND_ENV_HELP = ("The local server's Python environment, made by `rtk triton-env` (default: "
                    "$RTK_TRITON_ENV, else beside rtk's venv: .venv -> .venv-triton). Unused "
                    "when tritonserver is on PATH (the NGC image).")


@click.command()
@click.argument("repo", default="model_repository", type=click.Path())
@click.option("--http-port", default=8000, show_default=True)
@click.option("--grpc-port", default=8001, show_default=True)
@click.option("--metrics-port", default=8002, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Bind address; 0.0.0.0 exposes the server on every interface.")
@click.option("--timeout", default=180, show_default=True, help="Seconds to wait until ready.")
@click.option("--quiet", is_flag=True, help="Do not echo Triton's log (errors are still reported).")
@click.option("--load-model", "load_models", multiple=True, metavar="NAME",
              help="Load only this model (repeatable; an ensemble loads its steps too). "
                   "Default: every model in REPO.")
@click.option("--exit-timeout", default=10, show_default=True, type=click.IntRange(min=0),
              help="Seconds Triton lets in-flight requests finish after Ctrl-C or SIGTERM.")
@click.option("--backend-env", type=click.Path(), help=BACKEND_ENV_HELP)
@click.option("--control-key-file", type=click.Path(exists=True, dir_okay=False),
              help="The key (16+ characters) that Triton's control APIs (model load/unload, "
                   "config, repository index, shared memory, trace, logging) require in the "
                   "rtk-control-key header. Default: $RTK_TRITON_CONTROL_KEY, else a fresh key "
                   "per server, written to a file only you can read.")
@handled
def serve(repo, timeout, quiet, **options):
    """Run a real Triton server on REPO (a folder, or s3://... that Triton reads) until Ctrl-C.

    A model whose backend process dies (e.g. killed for memory) is reloaded within seconds;
    meanwhile Triton answers not ready on /v2/health/ready and on the model's ready endpoint.
    """
    from ..core.errors import RtkError
    from ..triton.server import TritonServer

    log = None if quiet else (lambda line: click.echo(line, err=True))
    # The watchdog's reload notices are printed even with --quiet: they are rtk's, not Triton's.
    server = TritonServer(repo, log=log, notify=lambda line: click.echo(line, err=True),
                          **options)
    # `docker stop`, `kill` and Ctrl-C all stop cleanly; SIGINT is installed explicitly because a
    # shell's background job starts with it ignored, and then Python never raises KeyboardInterrupt.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start(timeout)
        _announce(server)
        try:
            code = server.wait()
        except KeyboardInterrupt:
            click.echo("Stopping Triton...", err=True)
            server.stop()
            click.echo("Triton stopped.")
            return
        raise RtkError(f"Triton exited on its own (code {code}): {server.reason()}",
                       "See Triton's log above.")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _announce(server) -> None:
    ep = server.endpoints
    models = [m["name"] for m in server.models() if m.get("state") == "READY"]
    click.echo(f"Triton {server.version() or ''} is ready with {len(models)} model(s): "
               f"{', '.join(models)}")
    click.echo(f"  HTTP     http://{ep['http']}")
    click.echo(f"  gRPC     {ep['grpc']}")
    click.echo(f"  metrics  {ep['metrics']}")
    click.echo(f"Control APIs (load/unload, config, index) need the header rtk-control-key: "
               f"the key is in {server.key_files[0] if server.key_files else '$RTK_TRITON_CONTROL_KEY'}"
               " (rtk's clients on this machine find it there)")
    click.echo(f"Try: rtk predict RUN_DIR IMAGE --backend triton --url {ep['http']}")
    click.echo("Press Ctrl-C to stop.")


@click.command("triton-env")
@click.argument("path", required=False, type=click.Path())
@click.option("--python", "python", type=click.Path(exists=True, dir_okay=False),
              help="Interpreter to base it on (default: this one); needs a shared libpython.")
@click.option("--force", is_flag=True, help="Delete and rebuild an existing environment.")
@click.option("--check", "check_only", is_flag=True, help="Only check it; create nothing.")
@handled
def triton_env(path, python, force, check_only):
    """Make the local Triton server's Python environment at PATH, or bring it up to date.

    nvidia-pytriton's tritonserver, numpy<2 for its Python backend stub, Pillow and onnxruntime
    for rtk's models, apart from rtk's own environment (which may have numpy 2). PATH defaults
    to $RTK_TRITON_ENV, else beside rtk's venv (.venv -> .venv-triton), where `rtk serve`,
    `rtk tune` and the tests look for it. Not needed in the NGC Triton image.
    """
    from ..triton import backend_env

    echo = lambda m: click.echo(m, err=True)  # noqa: E731 - stdout holds the result
    env = (backend_env.check(path) if check_only
           else backend_env.create(path, python=python, force=force, echo=echo))
    click.echo(f"Triton backend environment ready: {backend_env.describe(env)}")


@click.command()
@click.argument("url", default="127.0.0.1:8000")
@handled
def ready(url):
    """Exit 0 when every model of the Triton server at URL (HTTP) is READY, else 2 naming those
    that are not: the health check of Compose and of anything that must not send traffic to a
    server missing a model, however it got there (a plain /v2/health/ready stays 200 after a
    model is unloaded). Uses the control key (model index) as rtk's clients find it."""
    from ..core import control_key as keys
    from ..core.errors import RtkError
    from ..triton.watchdog import ModelControl

    states = ModelControl(f"http://{url.split('://', 1)[-1]}", keys.client_key(url)).states()
    if states is None:
        raise RtkError(f"Triton at {url} does not answer its model index.",
                       f"Is it up, and is {keys.ENV} set to its control key?")
    missing = {m: s for m, s in states.items() if s and s != "READY"}  # "": never loaded
    if missing or not states:
        raise RtkError("Not ready: " + (", ".join(f"{m} is {s or 'unknown'}" for m, s in
                                                   sorted(missing.items())) or "no model loaded"),
                       "rtk serve loads a model that was unloaded again within seconds.")
    click.echo(f"ready: {', '.join(sorted(states))}")

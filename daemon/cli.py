"""`tc-daemon` and its subcommands.

Gateway commands (run, classify, models, bench) need only the runtime
dependencies; the training ones (dataset, train, sweep, export, report) import
models/ and its TensorFlow/scikit-learn stack lazily, and say so when the
`[train]` extra is missing.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__

from .errors import CliError


def _train_import(name: str):
    try:
        return __import__(f"models.{name}", fromlist=[name])
    except ImportError as e:
        raise CliError(f"this command needs the training extra: pip install 'tc-daemon[train]' ({e})")


def cmd_dataset(a):
    ds = _train_import("dataset")
    classes = [c.strip() for c in a.classes.split(",")] if a.classes else None
    ds.build(a.captures, a.output, source=a.labels, classes=classes, class_set=a.class_set,
             labels_map=a.labels_map or ds.L.DEFAULT_MAP, balance_to=a.balance, keep_empty=a.keep_empty,
             drop_guessed=a.drop_guessed, include_other=not a.no_other, seed=a.seed, jobs=a.jobs,
             progress=not a.quiet)


def cmd_train(a):
    _train_import("train").main(a)


def cmd_sweep(a):
    _train_import("sweep").main(a)


def cmd_crossval(a):
    _train_import("crossval").main(a)


def cmd_report(a):
    _train_import("report").main(a)


def cmd_export(a):
    _train_import("export").main(a)


def cmd_models(a):
    from . import registry
    registry.cli_list(a)


def cmd_classify(a):
    from . import pipeline
    return pipeline.cli_classify(a)


def cmd_run(a):
    from . import service
    return service.main(a)


def cmd_bench(a):
    from bench import run as bench_run
    return bench_run.main(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tc-daemon", description="Real-time traffic classification for "
                                "community-network gateways (packets -> TFLite model -> Prometheus).")
    p.add_argument("--version", action="version", version=f"tc-daemon {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="capture live traffic and export per-class metrics (the daemon)")
    r.add_argument("--config", "-c", help="YAML config (default: built-in defaults)")
    r.add_argument("--interface", "-i", action="append", help="capture interface (overrides config)")
    r.add_argument("--pcap", help="replay a capture instead of a live interface")
    r.add_argument("--memory-budget", help="largest model to load, e.g. 2MiB (overrides config)")
    r.add_argument("--model", help="model name from the manifest, or a .tflite path")
    r.add_argument("--listen", help="metrics address host:port (overrides config)")
    r.add_argument("--check-config", action="store_true", help="validate the config and exit")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("classify", help="classify captures offline with the same pipeline")
    c.add_argument("captures", nargs="*", help="pcap/pcapng files or folders (default: the bundled sample)")
    c.add_argument("--mode", choices=["flow", "packet"], default=None,
                   help="flow: first k payload packets decide a flow (default, or pipeline.mode from --config); "
                        "packet: every payload packet")
    c.add_argument("--output", choices=["flows", "packets", "summary"], default="summary")
    c.add_argument("--format", choices=["table", "jsonl", "csv"], default="table")
    c.add_argument("--model", help="model name from the manifest, or a .tflite path")
    c.add_argument("--memory-budget", help="largest model to load, e.g. 2MiB")
    c.add_argument("--config", "-c", help="YAML config for pipeline settings")
    c.add_argument("--threshold", type=float, help="reject threshold (below: 'other'); default from the manifest")
    c.set_defaults(func=cmd_classify)

    m = sub.add_parser("models", help="the shipped models")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    ml = msub.add_parser("list", help="list models with their figures; mark the one a budget chooses")
    ml.add_argument("--format", choices=["table", "json"], default="table")
    ml.add_argument("--memory-budget", help="e.g. 2MiB, 500k; default from the config or unlimited")
    ml.add_argument("--min-pps", type=float, help="floor on packets/s at batch 1")
    ml.add_argument("--config", "-c", help="YAML config (model.memory_budget)")
    ml.set_defaults(func=cmd_models)

    d = sub.add_parser("dataset", help="labelled datasets from captures (training extra)")
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION")
    dsub.required = True
    db = dsub.add_parser("build", help="captures -> flows -> nDPI labels -> per-packet npz")
    db.add_argument("captures", nargs="+", help="capture files or folders")
    db.add_argument("-o", "--output", required=True, help="output .npz")
    db.add_argument("--labels", choices=["nfstream", "out"], default="nfstream",
                    help="label source: nDPI through nfstream (default) or nDPI's .out files beside the captures")
    db.add_argument("--class-set", choices=["rule", "paper"], default="rule",
                    help="rule: classes passing labels.yaml's class_rule (default); paper: the paper's ten")
    db.add_argument("--classes", help="explicit comma-separated class list (overrides --class-set)")
    db.add_argument("--labels-map", default=None, help="YAML map of nDPI names to classes")
    db.add_argument("--balance", help="cap each class at N packets, or 'min' for the smallest class")
    db.add_argument("--keep-empty", action="store_true", help="keep packets without transport payload")
    db.add_argument("--drop-guessed", action="store_true", help="drop flows nDPI only guessed (port/IP)")
    db.add_argument("--no-other", action="store_true", help="drop packets outside the class set")
    db.add_argument("--seed", type=int, default=0)
    db.add_argument("--jobs", "-j", type=int, default=0, help="worker processes (default: all cores)")
    db.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    db.set_defaults(func=cmd_dataset)

    for name, fn, helptext in (("train", cmd_train, "train one configuration (training extra)"),
                               ("sweep", cmd_sweep, "the paper's grid: families x budgets x learning rates"),
                               ("crossval", cmd_crossval, "capture-disjoint cross-validation of one model "
                                "variant (traffic never seen in training)"),
                               ("export", cmd_export, "export trained models to TFLite and ship them"),
                               ("report", cmd_report, "tables and plots from sweep results")):
        sp = sub.add_parser(name, help=helptext)
        _train_args(name, sp)
        sp.set_defaults(func=fn)

    b = sub.add_parser("bench", help="throughput and latency benchmarks: table + JSON")
    b.add_argument("--only", help="comma list of sections: models,features,offline,live")
    b.add_argument("--output", "-o", default="docs/bench.json", help="JSON output path")
    b.add_argument("--corpus", help="captures for the offline section (default: ../shared/data/ndpi-pcaps/pcap)")
    b.add_argument("--quick", action="store_true", help="shorter runs (for CI smoke)")
    b.add_argument("--update-manifest", action="store_true",
                   help="write the models section's speed and memory into the shipped manifest "
                        "(maintainers, on a quiet machine)")
    b.set_defaults(func=cmd_bench)
    return p


def _train_args(name, sp):
    """Arguments of the training commands, declared by models/ without importing TensorFlow."""
    try:
        from models import cli_args
    except ImportError as e:
        sp.set_defaults(_missing=str(e))
        return
    cli_args.add(name, sp)


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        rc = a.func(a)
        return int(rc or 0)
    except CliError as e:  # ConfigError included: a bad --config from any command exits 78
        print(f"tc-daemon: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tc-daemon classify ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())

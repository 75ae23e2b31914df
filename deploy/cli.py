"""``export``, ``serve`` and ``predict`` commands (``python -m deploy CMD ...``).

Each ``*_main(argv) -> int`` parses its flags with chain.cli's shared vocabulary and
calls one typed function; bad input is one ``error: ...`` line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from chain.cli import EXIT_BAD_INPUT, add_common, default_threads, guarded, positive_int, quiet_libraries
from chain.errors import SpecError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is chainpress' one line + exit 2 (not a usage dump)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _run(parser: argparse.ArgumentParser, argv, body) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    quiet_libraries(args.verbose, args.quiet)
    return guarded(lambda: body(args))


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def export_main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="chainpress export", description="Export an artifact so it runs without chainpress.")
    p.add_argument("artifact", help="a chainpress artifact directory (hf or onnx format)")
    p.add_argument("out", help="directory to write (replaced if it is an earlier export)")
    p.add_argument("--target", choices=("bundle", "portable", "triton", "openvino"), default="bundle")
    p.add_argument("--labels", help="comma-separated class names (default: config.json's, else the task's)")
    p.add_argument("--max-length", type=positive_int, default=128, help="tokens per text (default: 128)")
    p.add_argument("--precision", choices=("auto", "fp32", "int8", "bf16"), default="auto",
                   help="portable: int8 (standard MatMulInteger) or fp32, auto = int8 if the artifact is; "
                        "openvino: the inference hint fp32 or bf16, auto = the artifact's")
    p.add_argument("--ort", action="store_true", help="portable: also write model.ort (ORT mobile)")
    p.add_argument("--name", help="triton: model name (default: the output directory's name)")
    p.add_argument("--max-batch-size", type=positive_int, default=32, help="triton: max_batch_size")
    p.add_argument("--instances", type=positive_int, default=1, help="triton: CPU instances")
    p.add_argument("--backend", choices=("onnxruntime", "openvino"), default="onnxruntime",
                   help="triton: the server backend (openvino: the IR of --target openvino)")
    p.add_argument("--queue-delay-us", type=positive_int, default=2000, help="triton: dynamic batching delay")
    add_common(p, threads=True)

    def body(args) -> int:
        from .export import ExportConfig, export

        labels = tuple(s.strip() for s in args.labels.split(",")) if args.labels else None
        cfg = ExportConfig(max_length=args.max_length, labels=labels, precision=args.precision, ort_format=args.ort,
                           name=args.name, max_batch_size=args.max_batch_size, instances=args.instances,
                           max_queue_delay_us=args.queue_delay_us, threads=args.threads or default_threads(),
                           backend=args.backend)
        res = export(args.artifact, args.out, args.target, cfg)
        if not args.quiet:
            print(json.dumps(res, indent=2, default=str))
        return 0
    return _run(p, argv, body)


def serve_main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="chainpress serve", description="Serve a bundle over HTTP (KServe v2 + /predict + /metrics).")
    p.add_argument("bundle", help="a directory written by `export --target bundle|portable`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="model name in the protocol (default: the bundle directory's name)")
    p.add_argument("--workers", type=positive_int, default=1, help="server processes (each loads the model)")
    p.add_argument("--max-batch-size", type=positive_int, default=32)
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=positive_int, default=1024, help="texts waiting before 503 (default: 1024)")
    p.add_argument("--max-texts", type=positive_int, default=256, help="texts per request (default: 256)")
    p.add_argument("--max-text-chars", type=positive_int, default=20000)
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20)
    p.add_argument("--drift-window", type=positive_int, default=500)
    p.add_argument("--drift-threshold", type=_positive_float, default=0.2, help="PSI that raises the alert")
    p.add_argument("--slo-p99-ms", type=_positive_float, default=500.0)
    add_common(p, threads=True)

    def body(args) -> int:
        from .batching import BatchConfig
        from .protocol import Limits
        from .server import ServerConfig, serve

        if not 0 <= args.port <= 65535:
            raise SpecError(f"--port must be 0..65535, got {args.port}")
        try:
            batch = BatchConfig(args.max_batch_size, args.max_queue_delay_ms, args.max_queue)
        except ValueError as e:
            raise SpecError(str(e)) from None
        cfg = ServerConfig(bundle=args.bundle, name=args.name, threads=args.threads or default_threads(), batch=batch,
                           limits=Limits(args.max_texts, args.max_text_chars, args.max_body_bytes),
                           drift_window=args.drift_window, drift_threshold=args.drift_threshold,
                           drift_min_samples=min(100, args.drift_window), slo_p99_ms=args.slo_p99_ms)
        logging.getLogger("chainpress").setLevel(logging.DEBUG if args.verbose else logging.INFO)
        serve(cfg, host=args.host, port=args.port, workers=args.workers,
              log_level="debug" if args.verbose else "warning" if args.quiet else "info")
        return 0
    return _run(p, argv, body)


def predict_main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="chainpress predict", description="Predict every row of a CSV/TSV/JSONL file.")
    p.add_argument("bundle")
    p.add_argument("--input", required=True, help="CSV, TSV or JSONL file with a text column")
    p.add_argument("--text-column", help="default: 'text', else 'sentence'")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--no-bucketing", action="store_true", help="batch in file order (no length sorting)")
    p.add_argument("--max-rows", type=positive_int, help="only the first N rows")
    p.add_argument("--task", action="append", metavar="NAME", help="a multi-task bundle's head to predict "
                   "(repeat for several; default or 'all': every head, as pred_<task>_* columns)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the model calls on Ray Data: 'local' (a Ray started "
                   "here), 'auto' (this node's cluster) or ray://host:10001; needs pip install 'chainpress[ray]'")
    p.add_argument("--ray-workers", type=positive_int, default=1, help="--ray: model actors (one model each)")
    add_common(p, output=True, output_help="output file (.csv, .tsv or .jsonl)", threads=True)

    def body(args) -> int:
        from .predict import PredictConfig, predict

        if args.output is None:
            raise SpecError("give --output FILE (.csv, .tsv or .jsonl)")
        cfg = PredictConfig(bundle=args.bundle, input=args.input, output=str(args.output),
                            text_column=args.text_column, batch_size=args.batch_size,
                            bucketing=not args.no_bucketing, threads=args.threads or default_threads(),
                            progress=not args.quiet, max_rows=args.max_rows,
                            tasks=tuple(args.task) if args.task else None)
        if args.ray:
            from .predict_ray import predict_ray

            res = predict_ray(cfg, args.ray, args.ray_workers)
        else:
            res = predict(cfg)
        if not args.quiet:
            print(json.dumps(res, indent=2))
        return 0
    return _run(p, argv, body)


COMMANDS = {"export": export_main, "serve": serve_main, "predict": predict_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            print("usage: python -m deploy {export,serve,predict} ...")
            return 0
        print(f"error: give a command: {', '.join(COMMANDS)} (got {argv[0] if argv else 'nothing'!r})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return COMMANDS[argv[0]](argv[1:])

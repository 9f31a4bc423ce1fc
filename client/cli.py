"""`longshap`: explain, classify and rerank against a server (or `--local`), and `serve`.

Exit codes: 0 ok, 2 usage error (bad option, unreadable or non-UTF-8 input),
1 with a one-line message when the server (or the local engine) refuses or fails,
141 when the reader of stdout goes away (`longshap ... | head -1`), without a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TextIO

import grpc
from longshap.client.api import LongShapClient, LongShapError, explain_request, rerank_request
from longshap.client.render import html_report, terminal_level, terminal_view
from longshap.proto.wire import event_to_proto, explain_options, pb, prompt_options, rerank_to_proto
from longshap.server.app import INT32_MAX, add_model_options, bounded, model_options

if TYPE_CHECKING:
    from longshap.hierarchy import Explainer

DEFAULT_SERVER = "127.0.0.1:50051"
SEED_MAX = 2**63 - 1


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


# ---- input ----------------------------------------------------------------------------------------------


def read_text(path: str) -> str:
    """A UTF-8 file, or stdin for '-'; anything else is a usage error naming the file."""
    name = "stdin" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"{name}: cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{name}: not valid UTF-8 (byte {error.start})") from None


def read_documents(docs: Sequence[str], jsonl: str | None) -> list[dict]:
    """Documents from --doc files (titled by file name) and/or a --docs-jsonl file of {"title", "text"} lines."""
    if sum(path == "-" for path in [*docs, jsonl]) > 1:
        raise UsageError("stdin ('-') can be read only once")
    documents = [{"title": "" if path == "-" else Path(path).stem, "text": read_text(path)} for path in docs]
    if jsonl is not None:
        name = "stdin" if jsonl == "-" else jsonl
        for number, line in enumerate(read_text(jsonl).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{name}:{number}: not JSON: {error.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("title", ""), str):
                raise UsageError(f'{name}:{number}: expected an object with a "text" string (and an optional "title")')
            documents.append({"title": row.get("title", ""), "text": row["text"]})
    if not documents:
        raise UsageError("no documents: give --doc FILE (repeatable) or --docs-jsonl FILE")
    return documents


# ---- live display ---------------------------------------------------------------------------------------


def progress_bar(level: str, done: int, planned: int, width: int = 30) -> str:
    filled = min(width, round(width * done / planned)) if planned else width
    return f"{level:>9} [{'#' * filled}{'.' * (width - filled)}] {done}/{planned} evaluations"


class LiveView:
    """Prints the answer and each finished level as they stream in; a progress bar on a terminal."""

    def __init__(self, out: TextIO, err: TextIO, colour: bool, show_levels: bool, show_progress: bool) -> None:
        self.out, self.err = out, err
        self.colour, self.show_levels, self.show_progress = colour, show_levels, show_progress
        self.started = time.perf_counter()
        self.first_level_at: float | None = None
        self.last_event_at: float | None = None
        self.explanation: dict | None = None

    def handle(self, event: pb.ExplainEvent) -> None:
        self.last_event_at = time.perf_counter() - self.started
        kind = event.WhichOneof("event")
        if kind == "answer" and self.show_levels:
            print(f"answer ({event.answer.source}): {event.answer.answer!r}", file=self.out, flush=True)
        elif kind == "level_start":
            self._bar(progress_bar(event.level_start.level, 0, event.level_start.planned_evaluations))
        elif kind == "progress":
            self._bar(progress_bar(event.progress.level, event.progress.evaluations, event.progress.planned_evaluations))
        elif kind == "level":
            self._bar("")
            if self.first_level_at is None:
                self.first_level_at = self.last_event_at
            if self.show_levels:
                print(f"{terminal_level(event.level.level, self.colour)}\n   (at +{self.last_event_at:.1f} s)", file=self.out, flush=True)
        elif kind == "done":
            self.explanation = json.loads(event.done.explanation_json)

    def _bar(self, text: str) -> None:
        if self.show_progress:
            self.err.write(f"\r\x1b[2K{text}")
            self.err.flush()

    def timings(self) -> str:
        first = f"{self.first_level_at:.1f} s" if self.first_level_at is not None else "-"
        return f"first level event after {first}, last event after {self.last_event_at or 0:.1f} s"


# ---- event sources --------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> LongShapClient:
    try:
        token = args.token_file.read_text(encoding="utf-8").strip() if args.token_file else os.environ.get("LONGSHAP_TOKEN")
        tls_ca = args.tls_ca.read_bytes() if args.tls_ca else None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the token or CA file: {error}") from None
    if tls_ca is not None:
        _check_certificates(args.tls_ca, tls_ca)
    return LongShapClient(args.server, token=token or None, tls_ca=tls_ca, timeout=args.timeout)


def _check_certificates(path: Path, pem: bytes) -> None:
    """PEM certificates gRPC can trust; checked here, since gRPC only reports a failed handshake."""
    try:
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (UnicodeDecodeError, ValueError, ssl.SSLError):
        raise UsageError(f"--tls-ca {path}: cannot read certificate: expected PEM certificate(s)") from None


def _timeout(text: str) -> float | None:
    """Seconds > 0, or 'inf' for no deadline."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'inf', got {text!r}") from None
    if math.isnan(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds (or 'inf' for no deadline), got {text}")
    return None if math.isinf(seconds) else seconds


def _writable(path: Path) -> Path:
    """Refuse an output file that cannot be written before spending minutes on the explanation."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if path.is_dir() or not folder.is_dir() or not os.access(path if path.exists() else folder, os.W_OK):
        raise UsageError(f"--html {path}: cannot write there")
    return path


def _local_explainer(args: argparse.Namespace) -> Explainer:
    from longshap.hierarchy import Explainer

    try:
        return Explainer.from_pretrained(args.model or None, **model_options(args))
    except (OSError, ValueError, RuntimeError) as error:
        raise LongShapError(grpc.StatusCode.NOT_FOUND, f"model: {error}") from None


@contextlib.contextmanager
def _request_errors() -> Iterator[None]:
    """The engine's request errors, reported as a server reports them (no operator limits apply locally)."""
    from longshap.hierarchy.request import RequestError

    try:
        yield
    except RequestError as error:
        raise LongShapError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None


def local_events(args: argparse.Namespace, message: pb.ExplainRequest, on_progress: Callable[[pb.ExplainEvent], None]) -> Iterator[pb.ExplainEvent]:
    """Run the engine in-process under the same request rules, converted to the events a server streams."""
    from longshap.hierarchy.request import ExplainRequest

    with _request_errors():
        request = ExplainRequest.build(**explain_options(message))
    explainer = _local_explainer(args)
    with _request_errors():
        yield from (event_to_proto(e) for e in explainer.explain_stream(request, on_progress=lambda p: on_progress(event_to_proto(p))))


# ---- commands -------------------------------------------------------------------------------------------


def _explain(args: argparse.Namespace, request: pb.ExplainRequest, documents: list[dict], question: str) -> int:
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    progress = not args.no_progress and sys.stderr.isatty()
    if args.html:
        _writable(args.html)
    view = LiveView(sys.stdout, sys.stderr, colour, show_levels=not args.json, show_progress=progress)
    with contextlib.ExitStack() as stack:
        if args.local:
            events = local_events(args, request, view.handle)
        else:
            events = stack.enter_context(_client(args)).explain_events(request)
        for event in events:
            view.handle(event)
    explanation = view.explanation
    if explanation is None:
        raise LongShapError(grpc.StatusCode.UNKNOWN, "the explanation stream ended without its final event")
    if args.json:
        print(json.dumps(explanation, indent=2, ensure_ascii=False))
    else:
        stats = explanation["stats"]
        print(f"\n{terminal_view(explanation, documents, colour)}\n")
        print(
            f"{stats['evaluations']} evaluations, {stats['forward_tokens']} forwarded tokens, "
            f"{stats['wall_seconds']:.1f} s explaining; {view.timings()}"
        )
    if args.html:
        try:
            args.html.parent.mkdir(parents=True, exist_ok=True)
            args.html.write_text(html_report(explanation, documents, question), encoding="utf-8")
        except OSError as error:
            raise UsageError(f"--html {args.html}: cannot write: {error.strerror or error}") from None
        print(f"wrote {args.html}", file=sys.stderr)
    if args.png:
        from longshap.client.plot import write_png

        try:
            write_png(explanation, args.png)
        except RuntimeError as error:
            raise UsageError(str(error)) from None
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def per_level(kind: Callable[[str], float | int]) -> Callable[[str], float | int | dict]:
    """argparse type: one number for every level, or LEVEL=NUMBER pairs separated by commas."""

    def parse(text: str) -> float | int | dict:
        try:
            if "=" not in text:
                return kind(text)
            pairs = (item.split("=", 1) for item in text.split(","))
            return {level.strip(): kind(number) for level, number in pairs}
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or LEVEL=NUMBER[,LEVEL=NUMBER...], got {text!r}") from None

    return parse


def _common_request(args: argparse.Namespace) -> dict:
    return dict(
        model=args.model or "", target=args.target, levels=args.levels.split(",") if args.levels else (),
        thresholds=args.threshold, max_expanded=args.max_expanded, method=args.method or "", budget=args.budget,
        seed=args.seed, value=args.value or "", mode=args.mode or "", instruction=args.instruction or "",
        placeholder=args.placeholder, target_stderr=args.target_stderr, max_new_tokens=args.max_new_tokens,
        speculative=args.speculative, baseline=args.baseline or "", adaptive=args.adaptive, total_budget=args.total_budget,
        confidence=args.confidence,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    documents = read_documents(args.doc, args.docs_jsonl)
    request = explain_request(question=args.question, documents=documents, **_common_request(args))
    return _explain(args, request, documents, args.question)


def cmd_classify(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.text_file is None):
        raise UsageError("give the text with exactly one of --text or --text-file")
    text = args.text if args.text is not None else read_text(args.text_file)
    labels = [label for spec in args.label for label in spec.split(",")]
    request = explain_request(text=text, labels=labels, **_common_request(args))
    return _explain(args, request, [{"title": "", "text": text}], "")


def cmd_rerank(args: argparse.Namespace) -> int:
    documents = read_documents(args.doc, args.docs_jsonl)
    request = rerank_request(args.question, documents, args.candidate, args.model or "", args.budget, args.seed, args.method or "")
    if args.local:
        from longshap.hierarchy.rerank import rerank, rerank_request as engine_rerank_request

        options = dict(prompt_options(request.prompt), method=request.method or None, budget=args.budget, seed=request.seed)
        with _request_errors():
            engine_request, candidates = engine_rerank_request(list(request.candidates), **options)
        explainer = _local_explainer(args)
        with _request_errors():
            response = rerank_to_proto(rerank(explainer, engine_request, candidates))
    else:
        with _client(args) as client:
            response = client.rerank(request)
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(response, always_print_fields_with_no_presence=True), indent=2, ensure_ascii=False))
        return 0
    print("answers, best supported by the documents first (total effect of the documents on log p(answer)):")
    for rank, answer in enumerate(response.answers, 1):
        print(f"  {rank}. {answer.total_effect:+9.4f}  {answer.answer}")
    print(f"documents ranked for {response.answers[0].answer!r}:")
    for rank, doc in enumerate(response.documents, 1):
        print(f"  {rank}. d{doc.index} {doc.value:+9.4f} ± {doc.stderr:.4f}  {doc.title}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.list_models()
    for model in response.models:
        print(f"{model.name}{' (default)' if model.is_default else ''}  {model.architecture}")
    limits = response.limits
    print(
        f"limits: {limits.max_documents} documents, {limits.max_characters} characters per evaluation, "
        f"{limits.max_field_characters} per field, {limits.max_labels} labels, budget {limits.max_budget}, queue {limits.queue_size}"
    )
    return 0


# ---- parser ---------------------------------------------------------------------------------------------


def method_names() -> list[str]:
    from longshap.hierarchy.request import method_names as names

    return names()


def _connection(parser: argparse.ArgumentParser, local: bool = True) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", default=os.environ.get("LONGSHAP_SERVER", DEFAULT_SERVER), help=f"HOST:PORT (default $LONGSHAP_SERVER or {DEFAULT_SERVER})")
    if local:
        where.add_argument("--local", action="store_true", help="run the engine in this process instead of calling a server")
    parser.add_argument("--token-file", type=Path, help="bearer token file (default: $LONGSHAP_TOKEN)")
    parser.add_argument("--tls-ca", type=Path, help="PEM certificate(s) to trust; turns on TLS")
    parser.add_argument("--timeout", type=_timeout, help="deadline in seconds ('inf' or unset: none)")
    parser.add_argument("--model", help="served model name (with --local: a local model directory)")
    if local:
        add_model_options(parser)  # a server loads its own models: these flags need --local


def _check_model_options(args: argparse.Namespace) -> None:
    """Model-loading flags name how --local loads its model; against a server they would be silently ignored."""
    if getattr(args, "local", True):
        return
    given = [f"--{flag.replace('_', '-')}" for flag, value in model_options(args).items() if value not in (None, "float32", "auto")]
    if given:
        raise UsageError(f"{', '.join(given)}: model loading options need --local (a server loads its models with `longshap serve` flags)")


def _explanation_options(parser: argparse.ArgumentParser) -> None:
    _connection(parser)
    parser.add_argument("--target", help="the answer/label to explain (default: the model's own)")
    parser.add_argument("--levels", help="comma-separated, coarse to fine, e.g. document,sentence,word")
    parser.add_argument("--threshold", type=per_level(float), help="expansion threshold: one for every level, or e.g. document=0.2,sentence=0.1")
    parser.add_argument("--max-expanded", type=per_level(int), help="most units expanded per level: one number, or e.g. document=2,sentence=4")
    parser.add_argument("--method", help=f"estimator: {' | '.join(method_names())}")
    parser.add_argument("--adaptive", action="store_true", help="spend evaluations only where expansion or top-k order is unsettled")
    parser.add_argument("--total-budget", type=bounded(int, 1, INT32_MAX), help="model evaluations for all levels together (implies --adaptive)")
    parser.add_argument("--confidence", type=float, help="confidence at which --adaptive calls a decision settled (default 0.95)")
    parser.add_argument("--baseline", choices=("zero", "pad"), help="integrated_gradients' baseline embedding (default zero)")
    parser.add_argument("--budget", type=bounded(int, 1, INT32_MAX), help="model evaluations per level")
    parser.add_argument("--seed", type=bounded(int, 0, SEED_MAX), default=0, help=f"0..{SEED_MAX}")
    parser.add_argument("--value", help="logprob | probability | answers | label")
    parser.add_argument("--mode", help="owen (children add up to their parent, default) | local (everything outside the unit stays)")
    parser.add_argument("--target-stderr", type=float, help="stop a level early once every standard error is below this")
    parser.add_argument("--placeholder", help="replace removed units with this text instead of dropping them")
    parser.add_argument("--max-new-tokens", type=int, help="longest greedy answer (default 20)")
    parser.add_argument("--speculative", action="store_true", help="verify already-seen answers in one pass (value 'answers')")
    parser.add_argument("--instruction", help="replaces the default instruction")
    parser.add_argument("--json", action="store_true", help="print the explanation as the engine's JSON")
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML report")
    parser.add_argument("--png", type=Path, metavar="FILE", help="also write a figure (needs matplotlib: pip install 'longshap[plot]')")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _documents_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question", required=True)
    parser.add_argument("--doc", action="append", default=[], metavar="FILE", help="a document file ('-' for stdin), repeatable")
    parser.add_argument("--docs-jsonl", metavar="FILE", help='documents as JSON lines {"title", "text"} (\'-\' for stdin)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longshap", description="Hierarchical Shapley explanations of LLM answers.")
    commands = parser.add_subparsers(dest="command", required=True)
    from longshap.server.app import build_parser as serve_parser

    serve_parser(commands.add_parser("serve", help="run the gRPC server"))
    explain = commands.add_parser("explain", help="explain an answer to a question over documents")
    _documents_options(explain)
    _explanation_options(explain)
    explain.set_defaults(run=cmd_explain)
    classify = commands.add_parser("classify", help="explain a classification")
    classify.add_argument("--text")
    classify.add_argument("--text-file", metavar="FILE", help="the text to classify ('-' for stdin)")
    classify.add_argument("--label", action="append", required=True, help="a label (repeatable, or comma-separated)")
    _explanation_options(classify)
    classify.set_defaults(run=cmd_classify)
    rerank = commands.add_parser("rerank", help="rank candidate answers by document support")
    _documents_options(rerank)
    rerank.add_argument("--candidate", action="append", required=True, help="a candidate answer (repeatable)")
    _connection(rerank)
    rerank.add_argument("--budget", type=bounded(int, 1, INT32_MAX), help="document-level evaluations per candidate")
    rerank.add_argument("--seed", type=bounded(int, 0, SEED_MAX), default=0, help=f"0..{SEED_MAX}")
    rerank.add_argument("--method")
    rerank.add_argument("--json", action="store_true")
    rerank.set_defaults(run=cmd_rerank)
    models = commands.add_parser("models", help="list a server's models and limits")
    _connection(models, local=False)
    models.set_defaults(run=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from longshap.server.app import main as serve

        return serve(args=args)
    try:
        _check_model_options(args)
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except UsageError as error:
        print(f"longshap {args.command}: {error}", file=sys.stderr)
        return 2
    except LongShapError as error:
        message = " ".join(str(error).split())
        print(f"longshap {args.command}: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`longshap ... | head -1`): stop quietly, and keep Python's exit-time flush from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())

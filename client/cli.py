"""`longshap`: explain, classify and rerank against a server (or `--local`), and `serve`.

Exit codes: 0 ok, 2 usage error (bad option, unreadable or non-UTF-8 input),
1 with a one-line message when the server (or the local engine) refuses or fails,
141 when the reader of stdout goes away (`longshap ... | head -1`), without a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import grpc
from longshap.client.api import LongShapClient, LongShapError, explain_request, rerank_request
from longshap.client.inputs import UsageError, read_documents, read_text
from longshap.client.render import LiveView, html_report, terminal_view
from longshap.hierarchy.options import OPTIONS, Option
from longshap.proto.wire import event_to_proto, explain_options, pb, prompt_options
from longshap.server.app import add_model_options, given_model_flags, model_options
from longshap.server.limits import bounded

if TYPE_CHECKING:
    from longshap.hierarchy import Explainer

DEFAULT_SERVER = "127.0.0.1:50051"


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


def _writable(path: Path, flag: str, suffix: str | None = None) -> Path:
    """Refuse an output file that cannot be written before spending minutes on the explanation."""
    if suffix is not None and path.suffix.lower() != suffix:
        raise UsageError(f"{flag} {str(path)!r}: name the file with {suffix} (it is written as {suffix[1:].upper()})")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if path.is_dir() or not folder.is_dir() or not os.access(path if path.exists() else folder, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot write there")
    return path


def _local_explainer(args: argparse.Namespace) -> Explainer:
    from longshap.hierarchy import Explainer

    try:
        return Explainer.from_pretrained(args.model or None, **model_options(args))
    except (OSError, ValueError, RuntimeError) as error:
        code = grpc.StatusCode.NOT_FOUND if isinstance(error, OSError) else grpc.StatusCode.FAILED_PRECONDITION
        raise LongShapError(code, f"cannot load a model: {error}") from None


@contextlib.contextmanager
def _request_errors() -> Iterator[None]:
    """The engine's request errors, reported as a server reports them (no operator limits apply locally)."""
    from longshap.hierarchy.request import RequestError

    try:
        yield
    except RequestError as error:
        raise LongShapError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None


def run_local(args: argparse.Namespace, message: pb.ExplainRequest, handle: Callable[[pb.ExplainEvent], None]) -> None:
    """Run a server's Explain job in-process under the engine's request rules, handing on the events a server would stream."""
    from longshap.hierarchy.request import ExplainRequest
    from longshap.server import jobs

    with _request_errors():
        request = ExplainRequest.build(**explain_options(message))
    explainer = _local_explainer(args)
    with _request_errors():
        jobs.explain(explainer, request, lambda event: handle(event_to_proto(event)), _never_stop)


def _never_stop() -> bool:
    """In-process work ends with the process (Ctrl-C), not on a client's request."""
    return False


# ---- commands -------------------------------------------------------------------------------------------


def _explain(args: argparse.Namespace, request: pb.ExplainRequest, documents: list[dict], question: str) -> int:
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    progress = not args.no_progress and sys.stderr.isatty()
    if args.html:
        _writable(args.html, "--html")
    if args.png:
        _writable(args.png, "--png", ".png")
        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--png needs matplotlib: pip install 'longshap[plot]'")
    view = LiveView(sys.stdout, sys.stderr, colour, show_levels=not args.json, show_progress=progress)
    if args.local:
        run_local(args, request, view.handle)
    else:
        with _client(args) as client:
            for event in client.explain_events(request):
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
        except OSError as error:
            raise UsageError(f"--png {args.png}: cannot write: {error.strerror or error}") from None
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


def common_request(args: argparse.Namespace) -> dict:
    """The explanation flags as `explain_request` keywords: a flag left out is None, so the engine's default applies."""
    return {"model": args.model or "", "instruction": args.instruction or "", **{name: getattr(args, name) for name in OPTIONS}}


def cmd_explain(args: argparse.Namespace) -> int:
    documents = read_documents(args.doc, args.docs_jsonl)
    request = explain_request(question=args.question, documents=documents, **common_request(args))
    return _explain(args, request, documents, args.question)


def cmd_classify(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.text_file is None):
        raise UsageError("give the text with exactly one of --text or --text-file")
    text = args.text if args.text is not None else read_text(args.text_file)
    labels = [label for spec in args.label for label in spec.split(",")]
    request = explain_request(text=text, labels=labels, **common_request(args))
    return _explain(args, request, [{"title": "", "text": text}], "")


def cmd_rerank(args: argparse.Namespace) -> int:
    documents = read_documents(args.doc, args.docs_jsonl)
    request = rerank_request(args.question, documents, args.candidate, args.model or "", args.budget, args.seed or 0, args.method or "")
    if args.local:
        from longshap.hierarchy.rerank import rerank_request as engine_rerank_request
        from longshap.server import jobs

        options = dict(prompt_options(request.prompt), method=request.method or None, budget=args.budget, seed=request.seed)
        with _request_errors():
            engine_request, candidates = engine_rerank_request(list(request.candidates), **options)
        explainer = _local_explainer(args)
        responses: list[pb.RerankResponse] = []
        with _request_errors():
            jobs.rerank(explainer, engine_request, candidates, responses.append, _never_stop)
        (response,) = responses
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
        f"{limits.max_field_characters} per field, {limits.max_labels} labels, budget {limits.max_budget}, "
        f"{limits.max_players} players per game, queue {limits.queue_size}"
    )
    return 0


# ---- parser ---------------------------------------------------------------------------------------------


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
    given = given_model_flags(args)
    if given:
        raise UsageError(f"{', '.join(given)}: model loading options need --local (a server loads its models with `longshap serve` flags)")


def add_option(parser: argparse.ArgumentParser, option: Option, help: str | None = None) -> None:
    """A request option as a flag (help, type, choices and integer bounds from its declaration); left out, it is None.

    Integers are bounded here, since the wire cannot carry one out of its range; numbers
    are left to the engine's rules, so --local and a server refuse them alike.
    """
    settings: dict[str, Any] = {"dest": option.name}
    if option.kind is bool:
        settings["action"] = "store_true"
    else:
        settings["metavar"] = option.cli_flag.removeprefix("--").replace("-", "_").upper()
        settings["type"] = bounded(int, *option.bounds) if option.kind is int else option.kind
        if option.per_level:
            settings["type"] = per_level(settings["type"])
        elif option.repeated:
            settings["type"] = name_list(option)
        elif option.choices:
            settings["choices"] = option.allowed
    settings["help"] = _help(option, help or option.help).replace("%", "%%")
    parser.add_argument(option.cli_flag, **settings)


def _help(option: Option, text: str) -> str:
    """The option's help, with its choices or range and (unless none or off) its default."""
    if option.repeated:
        text += f"; comma-separated, each one of {' | '.join(option.allowed)}"
    elif option.choices:
        text += f"; one of {' | '.join(option.allowed)}"
    elif option.kind in (int, float):
        text += f"; {option.requirement}"
    default = option.default
    if isinstance(default, dict):
        default = ",".join(f"{level}={value}" for level, value in default.items())
    elif isinstance(default, tuple):
        default = ",".join(default)
    if option.per_level:
        text += ", one for every level or comma-separated LEVEL=VALUE pairs"
    return text if default is None or default is False else f"{text} (default: {default})"


def name_list(option: Option) -> Callable[[str], list[str]]:
    """argparse type: comma-separated names among the option's choices."""

    def parse(text: str) -> list[str]:
        chosen = [name.strip() for name in text.split(",")]
        for name in chosen:
            if name not in option.allowed:
                raise argparse.ArgumentTypeError(f"unknown {option.noun or option.name} {name!r}; choose from {', '.join(option.allowed)}")
        return chosen

    return parse


def _explanation_options(parser: argparse.ArgumentParser) -> None:
    _connection(parser)
    for option in OPTIONS.values():
        add_option(parser, option)
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
    add_option(rerank, OPTIONS["budget"], "document-level evaluations per candidate")
    add_option(rerank, OPTIONS["seed"])
    add_option(rerank, OPTIONS["method"])
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

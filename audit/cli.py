"""``safepolicy audit``: audit a policy, compare reports, or watch a model repository.

    safepolicy audit --policy MODEL_REPO/NAME/V --episodes 100 --out REPORT_DIR
    safepolicy audit --server HOST:PORT --name NAME --episodes 100 --out REPORT_DIR
    safepolicy audit compare REPORT_DIR... [--out FILE.md] [--plot FILE.png]
    safepolicy audit watch --repo MODEL_REPO --interval 3600 --metrics-port 9108 --out REPORTS

An audit of an exported policy also writes MODEL_REPO/NAME/VERSION/audit.json, the verdict that
``safepolicy serve --require-audit`` reads.

Exit status: 0 when the audit ran and PASSED, 1 when it ran and FAILED, 2 when it could not
run (bad input, unreachable server or Pushgateway).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safepolicy.audit.runner import AuditError, AuditSettings, AuditTarget
from safepolicy.cli import HelpFormatter, add_quiet_flag, report_error
from safepolicy.errors import SafepolicyError
from safepolicy.fileio import atomic_write_text

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _common(parser: argparse.ArgumentParser, episodes_required: bool) -> None:
    parser.add_argument(
        "--episodes",
        type=_positive_int,
        required=episodes_required,
        default=None if episodes_required else 100,
        help="episodes to play (episode i is reset with seed S + i)",
    )
    parser.add_argument("--seed", type=int, default=0, help="first reset seed")
    parser.add_argument(
        "--envs",
        type=_positive_int,
        default=4,
        help="environments stepped together with batched inference",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence of the upper bound on expected cost",
    )
    parser.add_argument(
        "--cvar-alpha",
        type=float,
        default=0.1,
        help="CVaR tail fraction (0.1: the worst 10%% of episodes)",
    )
    parser.add_argument("--resamples", type=int, default=4000, help="bootstrap resamples")


def audit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safepolicy audit",
        formatter_class=HelpFormatter,
        epilog="An audit of --policy also writes MODEL_REPO/NAME/VERSION/audit.json, which "
        "`safepolicy serve --require-audit` reads. Exit status: 0 PASS, 1 FAIL, "
        "2 could not run.",
        description="Replay a policy in its safety gym and decide whether it keeps its cost "
        "budget: PASS iff the one-sided upper confidence bound on expected episode "
        "cost is at most the cost limit. Also: `safepolicy audit compare ...`, "
        "`safepolicy audit watch ...`.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", type=Path, help="exported policy MODEL_REPO/NAME/VERSION")
    source.add_argument("--server", help="HOST:PORT of a running `safepolicy serve`")
    parser.add_argument("--name", help="policy name on the server (with --server)")
    parser.add_argument(
        "--version", type=_positive_int, help="version on the server (default: its serving version)"
    )
    parser.add_argument("--task", help="task to audit in (default: the policy's own)")
    parser.add_argument(
        "--cost-limit", type=float, help="episode cost limit (default: the policy's training limit)"
    )
    _common(parser, episodes_required=True)
    parser.add_argument("--pushgateway", help="push the results to this Pushgateway URL")
    add_quiet_flag(parser)
    parser.add_argument("--out", type=Path, required=True, help="report directory to write")
    return parser


def _open(args: argparse.Namespace) -> AuditTarget:
    from safepolicy.audit.runner import open_artifact, open_server

    if args.server is not None:
        if not args.name:
            raise AuditError("--server needs --name NAME, the policy to audit on that server")
        return open_server(args.server, args.name, args.version)
    if args.name or args.version:
        raise AuditError(
            "--name and --version go with --server; with --policy the directory "
            "MODEL_REPO/NAME/VERSION names the policy"
        )
    return open_artifact(args.policy)


def run_audit_command(argv: list[str]) -> int:
    from safepolicy.audit.metrics import PushError, push_report
    from safepolicy.audit.report import MARKDOWN_FILENAME
    from safepolicy.audit.runner import audit_policy

    args = audit_parser().parse_args(argv)
    settings = AuditSettings(
        episodes=args.episodes,
        task=args.task,
        cost_limit=args.cost_limit,
        seed=args.seed,
        num_envs=args.envs,
        confidence=args.confidence,
        cvar_alpha=args.cvar_alpha,
        bootstrap_resamples=args.resamples,
        progress=not args.quiet,
    )
    try:
        settings.validate()
        target = _open(args)
        report = audit_policy(target, settings, args.out)
    except SafepolicyError as error:
        report_error("safepolicy audit", error)
        return EXIT_ERROR
    s = report.statistics
    print(
        f"{report.verdict}: {report.policy.name} v{report.policy.version} on {report.task}: "
        f"expected episode cost <= {s.cost_upper_bound:.3f} at {report.confidence:.0%} "
        f"confidence (mean {s.costs.mean:.3f}, limit {report.cost_limit:g}, violation rate "
        f"{s.violation_rate:.3f}, {report.episodes} episodes); report "
        f"{args.out / MARKDOWN_FILENAME}"
    )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.pushgateway:
        try:
            push_report(report, args.pushgateway)
        except PushError as error:
            report_error("safepolicy audit", error)
            return EXIT_ERROR
    return EXIT_PASS if report.verdict == "PASS" else EXIT_FAIL


def compare_command(argv: list[str]) -> int:
    from safepolicy.audit.compare import compare_markdown, compare_plot
    from safepolicy.audit.report import load_report

    parser = argparse.ArgumentParser(
        prog="safepolicy audit compare",
        formatter_class=HelpFormatter,
        description="Put several audit reports side by side: a Markdown table and a picture "
        "(normalised reward, and cost bound and mean against each limit).",
    )
    parser.add_argument("reports", nargs="+", type=Path, help="REPORT_DIR or report.json")
    parser.add_argument(
        "--out", type=Path, metavar="FILE.md", help="write the Markdown table here, not stdout"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw the comparison here (default: beside --out, as FILE.png)",
    )
    args = parser.parse_args(argv)
    plot = args.plot or (args.out.with_suffix(".png") if args.out else None)
    labels = [str(path) for path in args.reports]
    try:
        reports = [load_report(path) for path in args.reports]
        text = compare_markdown(reports, labels)
        if plot is not None:
            compare_plot(reports, labels, plot)
        if args.out:
            atomic_write_text(args.out, text)
    except (SafepolicyError, OSError) as error:
        report_error("safepolicy audit compare", error)
        return EXIT_ERROR
    if args.out:
        print(f"wrote {args.out}" + (f" and {plot}" if plot else ""))
    else:
        print(text, end="")
        if plot is not None:
            print(f"wrote {plot}", file=sys.stderr)
    return 0


def watch_command(argv: list[str]) -> int:
    from safepolicy.audit.watch import watch

    parser = argparse.ArgumentParser(
        prog="safepolicy audit watch",
        formatter_class=HelpFormatter,
        description="Re-audit the latest version of every policy in a model repository on a "
        "schedule and expose the results on /metrics for Prometheus.",
    )
    parser.add_argument("--repo", type=Path, required=True, help="MODEL_REPO")
    parser.add_argument("--interval", type=float, required=True, help="seconds between rounds")
    parser.add_argument("--metrics-port", type=int, required=True, help="port for /metrics")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address for /metrics")
    # the old spelling; `safepolicy serve` calls the same thing --metrics-host
    parser.add_argument("--metrics-address", dest="metrics_host", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=Path("audit-reports"), help="reports go to OUT/NAME/VERSION"
    )
    parser.add_argument(
        "--all-versions",
        action="store_true",
        help="audit every version, not just the latest of each policy",
    )
    parser.add_argument("--rounds", type=_positive_int, help="stop after this many rounds")
    _common(parser, episodes_required=False)
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"--interval must be positive, got {args.interval}")
    settings = AuditSettings(
        episodes=args.episodes,
        seed=args.seed,
        num_envs=args.envs,
        confidence=args.confidence,
        cvar_alpha=args.cvar_alpha,
        bootstrap_resamples=args.resamples,
    )
    try:
        settings.validate()
        watch(
            args.repo,
            args.out,
            settings,
            args.interval,
            args.metrics_port,
            args.metrics_host,
            rounds=args.rounds,
            all_versions=args.all_versions,
        )
    except (SafepolicyError, ValueError, OSError) as error:
        report_error("safepolicy audit watch", error)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    """``safepolicy audit [compare|watch] ...``; see the module docstring for exit codes."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "compare":
        return compare_command(args[1:])
    if args and args[0] == "watch":
        return watch_command(args[1:])
    try:
        return run_audit_command(args)
    except SystemExit as exit_:  # argparse: usage errors exit 2 after printing the problem
        return int(exit_.code or 0)

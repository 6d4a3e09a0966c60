"""`python -m llava_manager.evaluation ARGS...` (or `llava-manager-eval ARGS...`): the `lmms-eval` command, with the
same arguments, run in this process through lmms-eval's `cli_evaluate`, that fails when the evaluation fails.

lmms-eval 0.7 exits 0 when an evaluation raises (its `cli_evaluate` logs the error unless `--verbosity DEBUG`), e.g.
for a model path that does not exist. This command exits 1 with a one-line error instead when an evaluation raised,
or when it wrote no `*_results.json` under `--output_path` although one was given; otherwise it exits as lmms-eval
does (0). Under a multi-process launcher (`accelerate launch -m llava_manager.evaluation ...`) only the main process
looks for the results file.

    python -m llava_manager.evaluation --model llava_manager --model_args pretrained=DIR --tasks mme \\
        --output_path results/ --log_samples
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

PROG = "llava-manager-eval"


def _results_files(output_path: str | None) -> dict[Path, int]:
    """The `*_results.json` files under `output_path`, with their modification times."""
    if not output_path or not Path(output_path).is_dir():
        return {}
    return {path: path.stat().st_mtime_ns for path in Path(output_path).rglob("*_results.json")}


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> int:
    """Runs lmms-eval on `argv` (default: the command line); returns the exit status (0 or 1)."""
    import lmms_eval.__main__ as cli

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:  # `lmms-eval eval ARGS...` is `lmms-eval ARGS...`
        argv = argv[1:]
    failures: list[str] = []
    evaluate_single = cli.cli_evaluate_single  # upstream: see llava_manager/upstream.py

    def checked(args):
        before = _results_files(args.output_path)
        try:
            result = evaluate_single(args)
        except Exception as error:
            failures.append(f"lmms-eval failed on --model {args.model} --tasks {args.tasks}: {_one_line(error)}")
            raise
        after = _results_files(args.output_path)
        if args.output_path and _is_main_process() and not any(before.get(p) != t for p, t in after.items()):
            failures.append(
                f"lmms-eval wrote no *_results.json under --output_path {args.output_path} "
                f"(--model {args.model} --tasks {args.tasks}); see its log above."
            )
        return result

    saved_argv = sys.argv
    sys.argv = [PROG, *argv]  # cli_evaluate's parse_eval_args reads the command line
    cli.cli_evaluate_single = checked
    try:
        cli.cli_evaluate()
    except Exception as error:  # raised again under --verbosity DEBUG; already recorded when the evaluation raised
        traceback.print_exc()
        if not failures:
            failures.append(f"lmms-eval failed: {_one_line(error)}")
    finally:
        cli.cli_evaluate_single = evaluate_single
        sys.argv = saved_argv
    if failures:
        for failure in failures:
            print(f"{PROG}: error: {failure}", file=sys.stderr)
        return 1
    return 0


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run() -> None:
    """The console script `llava-manager-eval`."""
    sys.exit(main())


if __name__ == "__main__":
    run()

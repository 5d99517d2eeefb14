"""`cli.py evaluate`: the run behind the command line (cli.py keeps the options and the printing)."""

from typing import Callable

from ..runtime.errors import InputError


def evaluate_from_cli(model, data, *, ood=None, passes=None, max_passes=None, min_passes=None, method="mc", seed=None,
                      report=None, output=None, uncertain_if=None, target_precision=0.9, on_error="stop",
                      shift=False, seeds=1, settings=None, progress_bar: Callable, note: Callable[[str], None]):
    """The evaluation's report (a dict), after writing `report`'s files when given. progress_bar(total):
    a context manager whose value has update(count); note(message): one line to the user (stderr).
    shift: also the evaluation under shift (evaluation.shift_report); seeds: the MC headline figures over
    this many mask seeds (evaluation.seed_spread) when > 1."""
    from ..runtime.checks import positive_int
    from ..runtime.safe_files import shown_path
    from ..runtime.session import MCSession
    from .evaluation import check_extras, check_flags, evaluate, load_data, run_facts, seed_spread, shift_report
    from .labelled_sets import batch_size
    from .shift import CORRUPTIONS, LEVELS

    seeds = positive_int("--seeds", seeds, InputError)
    with_plots = check_flags(target_precision, on_error, report)
    session = MCSession(model, settings=settings)
    plan = session.resolve(passes, flags=True, max_passes=max_passes, min_passes=min_passes, method=method)
    chosen, labelled, outside, failures = load_data(session, data, ood, output, uncertain_if, on_error)
    check_extras(session.info, chosen, labelled, plan, shift, seeds)
    for path, message in failures:
        note(f"warning: skipped: {message}")
    per_set = len(labelled) + (0 if outside is None else batch_size(outside))
    # --seeds' first seed and --shift's clean set reuse the evaluation's own predictions.
    total = 2 * per_set + (seeds - 1) * per_set + (2 * len(labelled) * LEVELS * len(CORRUPTIONS) if shift else 0)
    with progress_bar(total) as bar:
        result = evaluate(session, labelled, chosen, passes=plan, ood=outside, progress=bar.update,
                          target_precision=target_precision, uncertain_if=uncertain_if)
        if seeds > 1:
            result.report["seed_spread"] = seed_spread(session, labelled, chosen, plan, seeds, outside, bar.update,
                                                       (result.predictions["mc"], result.ood.get("mc")))
        if shift:
            result.report["shift"] = shift_report(session, labelled, chosen, plan, 0 if seed is None else seed,
                                                  bar.update, result.predictions)
    result.report = {**run_facts(model, data, ood, chosen, seed, session.provider, failures), **result.report}
    if report is not None:
        from .report import write_report

        written = write_report(report, result, with_plots)
        note(f"wrote {', '.join(shown_path(path) for path in written)}")
    return result.report

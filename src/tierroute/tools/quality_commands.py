"""The `tierroute` commands over labelled data: `data convert`, `calibrate` (from labelled
files, or from the routing log) and `eval`. tools/cli.py parses their flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from tierroute.quality.artifact import RecordedTexts, load_artifact, raw_scores
from tierroute.quality.calibrate import calibrate, to_json
from tierroute.quality.evaluate import (
    SHIPPED_ARTIFACT,
    Context,
    context,
    evaluate,
    load_rows,
    plot,
    print_table,
)
from tierroute.quality.fitting import Labelled, labelled
from tierroute.quality.labelled import (
    CONVERTERS,
    Row,
    split,
    write_rows,
)


def cmd_convert(args: argparse.Namespace) -> int:
    rows = list(CONVERTERS[args.benchmark](args.input))
    n = write_rows(rows, args.out)
    print(f"wrote {n} rows to {args.out}")
    return 0


def _target(text: str) -> dict[str, float]:
    key, _, value = text.partition("=")
    if key not in ("large_share", "pgr") or not value:
        raise SystemExit(f"--target must be large_share=X or pgr=X, got {text!r}")
    number = float(value)
    if not 0.0 < number < 1.0:
        raise SystemExit(f"--target {key} must be between 0 and 1, got {number}")
    return {key: number}


def cmd_calibrate(args: argparse.Namespace) -> int:
    if bool(args.data) == bool(args.from_log):
        raise SystemExit(
            "tierroute calibrate: give labelled JSONL files, or --from-log LOG (not both)"
        )
    if args.from_log:
        return calibrate_from_log(args)
    if not args.small or not args.large:
        raise SystemExit("tierroute calibrate: --small and --large name the models in `scores`")
    ctx = context(args.config, args.cache_dir)
    rows = split(load_rows(args.data), args.split)
    data = labelled(rows, args.small, args.large, ctx.embedder(), ctx.cache_dir)
    general = None
    if args.general:
        general_rows = split(load_rows(args.general), args.split)
        general = labelled(general_rows, args.small, args.large, ctx.embedder(), ctx.cache_dir)
    source = f"{', '.join(p.name for p in args.data)} ({args.split} half)"
    meta = _calibrated(
        source,
        data,
        args.model,
        _target(args.target),
        small=args.small,
        large=args.large,
        embedder_version=ctx.embedder().version,
        out=args.out,
        source=source,
        general=general,
        prior=_prior(args.prior, ctx),
        force=args.force,
    )
    cv = meta["calibration_out_of_fold"]
    print(
        f"wrote {args.out} ({meta['model']}, version {meta['version']}): on {len(rows)} "
        f"calibration prompts (out of fold) APGR {cv['apgr']:.3f}, CPT(50%) {cv['cpt50']:.1f}%; "
        f"at its threshold {cv['strong_share']:.1%} large calls"
    )
    return 0


def _calibrated(where: str, data: Labelled, model: str, target: dict[str, float], **kw: Any) -> Any:
    """`calibrate`, its refusals and data errors naming where the rows came from."""
    try:
        return calibrate(data, model, target, **kw)
    except ValueError as error:
        raise type(error)(f"{where}: {error}") from error


def calibrate_from_log(args: argparse.Namespace) -> int:
    """Labels from the routing log (the small tier's answers the validator escalated, or shadow
    mode found the large tier answering otherwise: the large tier was needed; those it
    delivered as confident, or the large tier agreed with: the small one was enough),
    combined with the prior by the same k-fold blend and refusal as labelled files."""
    from tierroute.router.route.log_reader import check, read_labels

    check(args.from_log)  # a wrong file is named before anything is loaded
    ctx = context(args.config, args.cache_dir)
    small = args.small or (ctx.tiers[0] if ctx.tiers else "")
    large = args.large or (ctx.tiers[-1] if ctx.tiers else "")
    prior = _prior(args.prior, ctx)
    if prior is None:
        raise SystemExit(
            f"tierroute calibrate --from-log {args.from_log}: a log teaches only about the "
            "prompts its router sent to the small tier, so it needs a prior to combine with: "
            "pass --prior ARTIFACT (the artifact the router served)"
        )
    embedder = ctx.embedder()
    labels = read_labels(args.from_log, small, embedder.version, embedder.dimension)
    needed = labels.needed_larger
    rows = [
        Row(key, {small: 1.0 - n, large: 1.0}, category)
        for key, n, category in zip(labels.keys, needed, labels.categories, strict=True)
    ]
    data = Labelled(
        rows,
        RecordedTexts(labels.keys, labels.features),
        labels.embeddings,
        np.ones(len(rows)),
        1.0 - needed,
    )
    source = f"routing log {args.from_log} ({len(rows)} judged answers of tier {small!r})"
    print(
        f"{args.from_log}: {len(rows)} answers of tier {small!r} judged "
        f"({len(rows) - labels.from_shadow} by the validator, {labels.from_shadow} against the "
        f"large tier in shadow mode): {int(needed.sum())} not good enough, "
        f"{int((needed == 0).sum())} good enough; skipped {labels.skipped}"
    )
    meta = _calibrated(
        str(args.from_log),
        data,
        args.model,
        _target(args.target),
        small=small,
        large=large,
        embedder_version=embedder.version,
        out=args.out,
        source=source,
        prior=prior,
        force=args.force,
    )
    # What the new threshold does to all the traffic the log saw, against the prior's.
    traffic = RecordedTexts(["?"] * len(labels.all_features), labels.all_features)
    shares = {}
    for name, folder in (("prior", prior), ("new", args.out)):
        m, arrays = load_artifact(folder)
        raw = raw_scores(m["model"], arrays, m.get("params", {}), labels.all_embeddings, traffic)
        shares[name] = float(np.mean(raw > m["threshold"]))
    prior_share = meta["cross_validated_apgr"].get("prior", {}).get("share", 0.0)
    print(
        f"wrote {args.out} ({meta['model']}, prior's share {prior_share}, version "
        f"{meta['version']}); of the {len(labels.all_features)} scored requests in the log, "
        f"{shares['new']:.1%} would go to the large tier ({shares['prior']:.1%} with the prior)"
    )
    return 0


def _prior(choice: str | None, ctx: Context) -> Path | None:
    """--prior: a folder, `none`, or by default the artifact the config serves (scorer
    learned), else the shipped default. Printed first: which prior the result must beat."""
    if choice == "none":
        print("prior: none (--prior none): the new artifact is compared with nothing")
        return None
    if choice:
        prior, why = Path(choice), "--prior"
    elif ctx.router.scorer == "learned" and ctx.router.artifact is not None:
        prior, why = ctx.router.artifact, "the config's router.artifact"
    else:
        prior, why = SHIPPED_ARTIFACT, "the shipped default; --prior ARTIFACT or none to change"
    if not (prior / "router.json").is_file():
        raise ValueError(
            f"the prior {prior} ({why}) is not a router artifact: pass "
            "--prior ARTIFACT (the artifact your router serves), or --prior none to calibrate "
            "without comparing against one"
        )
    print(f"prior: {prior} ({why})", flush=True)
    return prior


def cmd_eval(args: argparse.Namespace) -> int:
    ctx = context(args.config, args.cache_dir)
    rows = load_rows(args.data)
    meta, _ = load_artifact(args.artifact)
    small, large = meta["small"], meta["large"]
    data = labelled(split(rows, args.split), small, large, ctx.embedder(), ctx.cache_dir)
    calibration = None
    if args.split == "eval":
        calibration = labelled(
            split(rows, "calibrate"), small, large, ctx.embedder(), ctx.cache_dir
        )
    result = evaluate(ctx, args.artifact, data, calibration)
    title = args.name or ", ".join(p.stem for p in args.data)
    print_table(title, result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(to_json(result) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        plot(result, title, args.plot)
        print(f"wrote {args.plot}")
    return 0

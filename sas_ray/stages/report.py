"""The report stage: the sweep's analysis (:mod:`sas_ray.analysis.report`) committed as a
``report`` artifact, with the agreement of every ranking with the forgetting counts when the
pipeline ranked by forgetting (``forgetting-least`` / ``forgetting-most``, whose scores are
the forgetting events of each example). The files are rewritten only when the sweep's results,
the rankings compared or the analyze settings changed; the table is printed either way.
"""

from __future__ import annotations

from typing import Any

from sas_ray.analysis.records import label
from sas_ray.analysis.report import (
    Report,
    analyze,
    forgetting_agreement,
    print_report,
    report_files,
    write_report,
)
from sas_ray.config import Config, result_settings
from sas_ray.io import storage
from sas_ray.io.artifacts import load_ranking
from sas_ray.stages.sweep import Rankings

FORGETTING = ("forgetting-least", "forgetting-most")


def agreement_pairs(rankings: Rankings) -> list[tuple[str, str, str]]:
    """(label, ranking URI, forgetting ranking URI) for every nested ranking under a latent
    method that also has a forgetting ranking (latent-free ones: under the first method)."""
    nested: dict[tuple[str, str | None], str] = {}
    for (strategy, latent, _), (uri, _) in rankings.items():
        nested.setdefault((strategy, latent), uri)
    methods = list(dict.fromkeys(latent for _, latent in nested if latent))
    pairs = []
    for method in methods:
        forgetting = next((nested[(f, method)] for f in FORGETTING if (f, method) in nested),
                          None)
        for (strategy, latent), uri in nested.items() if forgetting else ():
            if strategy not in FORGETTING and (latent == method or (latent is None
                                               and method == methods[0])):
                pairs.append((label(strategy, latent, len(methods) > 1), uri, forgetting))
    return pairs


def agreement(rankings: Rankings) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Spearman agreement rows and the fingerprints of the rankings they compare."""
    rows, inputs = [], {}
    for name, uri, forgetting_uri in agreement_pairs(rankings):
        ranking, forgetting = load_ranking(uri), load_ranking(forgetting_uri)
        if not ranking.ranking.nested:
            continue
        rows.append(forgetting_agreement(name, ranking.ids, ranking.ranking.latent,
                                         forgetting.ids, forgetting.ranking.scores))
        for u in (uri, forgetting_uri):
            inputs[u] = storage.require_manifest(u)["fingerprint"]
    return rows, inputs


def report(cfg: Config, sweep: str, sweep_fp: str, rankings: Rankings, out: str
           ) -> dict[str, Any]:
    """Analyse the sweep at ``sweep`` into ``out``, print it; returns the report manifest."""
    result: Report = analyze(sweep, cfg.analyze)
    result.agreement, compared = agreement(rankings)
    results = storage.fingerprint([result.cells.to_dict("records"), result.agreement,
                                   [r.error for r in result.failed], result.missing])
    config = result_settings(cfg.analyze)
    inputs = {"sweep": sweep_fp, "results": results, "rankings": storage.fingerprint(compared)}
    if not storage.is_fresh(out, storage.stage_fingerprint("report", config, inputs, None)):
        write_report(result, out, title=cfg.run.name, config=config, inputs=inputs)
    print_report(result, report_files(out))
    return storage.require_manifest(out, "report")

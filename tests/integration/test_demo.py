"""``scope-router demo`` on the real data: the journey's mechanics (not its figures), over real HTTP.

A store from the packaged suite without the held-out model's outcomes; that model served under a new name by
the replay server and profiled through it with the openai client; the dataset's test queries of the suite's
tasks routed with it, its recorded test outcomes under the new name.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from scope_shared.cli import main
from scope_shared.data import load_outcomes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = {  # dataset -> (its default new model, the suite's tasks of it, the test tasks left out)
    "routerbench-zs": ("mistralai/mixtral-8x7b-chat", ["arc-challenge", "winogrande"], {"mbpp"}),
    "zeroeval": ("gpt-4o-mini-2024-07-18", ["crux", "gsm"], set()),
}


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_demo_journey(dataset: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, tasks, left_out = CASES[dataset]
    new = "new/" + model.rsplit("/", 1)[-1]
    assert main(["demo", "--data", str(data_dir / dataset), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    trip = json.loads((tmp_path / "demo_report.json").read_text())
    assert (trip["model"], trip["name"], trip["tasks"]) == (model, new, tasks)

    recorded: dict[str, float] = {}
    for o in load_outcomes(data_dir / dataset / "anchors.csv.gz"):
        if o.model == model:
            recorded[f"{dataset}/{o.query_id}"] = o.correct
    prof = trip["profile"]
    assert prof["select"] == "informative" and prof["recorded"] == prof["chosen"] == 50 == trip["served_answers"]
    assert set(prof["tasks"]) == set(tasks)
    for e in prof["entries"]:  # through the server, graded as the model's recorded grade
        assert e["correct"] == recorded[e["query_id"]] and e["usage"] == "reported"

    test = [o for o in load_outcomes(data_dir / dataset / "test.csv.gz")]
    by_task: dict[str, set[str]] = defaultdict(set)
    for o in test:
        by_task[o.task or ""].add(o.query)
    rt = trip["evaluation"]["routing"]
    assert rt["queries"] == sum(len(by_task[t]) for t in tasks)
    assert trip["left_out"] == {t: len(by_task[t]) for t in left_out}
    assert new in rt["pool"] and model not in rt["pool"]
    mine = [o.correct for o in test if o.model == model and o.task in tasks]
    assert rt["singles"][new]["accuracy"] == pytest.approx(np.mean(mine))
    assert trip["evaluation"]["anchors"] == 2414  # the packaged suite's questions
    assert trip["evaluation"]["estimation"]["auroc_per_model"][new] is not None
    for text in ("1. store: 2414 anchors", "2. profile:", "3. route:", "scope-router balanced", f"{new} (new)"):
        assert text in printed, text
    assert (tmp_path / "demo_curve.png").exists()

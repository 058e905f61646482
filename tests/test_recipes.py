"""Named recipes (conf/recipe/*.yaml), composed by DVC's Hydra integration into params.yaml."""
from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT, compose, make_repo, run

from pipeline.params import parse_params

RECIPES = sorted(p.stem for p in (ROOT / "conf/recipe").glob("*.yaml"))


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


def test_the_recipes_are_the_documented_ones():
    assert RECIPES == ["full", "full-fast", "full-lm", "rating", "sample"]


def test_params_yaml_is_what_dvc_exp_run_composes():
    # `dvc repro` reads params.yaml; `dvc exp run` rewrites it from conf/. They must agree, or the
    # first `dvc exp run` after a clone would change params nobody asked to change.
    assert (ROOT / "params.yaml").read_text() == compose(ROOT / "conf")


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_composes_to_valid_params_and_changes_only_what_it_names(recipe):
    composed = yaml.safe_load(compose(ROOT / "conf", [f"recipe={recipe}"]))
    parse_params(composed)  # the stages' own validation
    assert composed["recipe"] == recipe
    default = flat(yaml.safe_load(compose(ROOT / "conf")))
    named = flat(yaml.safe_load((ROOT / "conf/recipe" / f"{recipe}.yaml").read_text()))
    changed = {k for k, v in flat(composed).items() if default.get(k) != v}
    assert changed <= set(named)
    assert all(flat(composed)[k] == v for k, v in named.items())


def test_a_source_override_wins_over_the_recipe():
    composed = yaml.safe_load(compose(ROOT / "conf", ["recipe=full", "download.source=imdb-text"]))
    assert composed["download"]["source"] == "imdb-text" and composed["recipe"] == "full"


def test_dvc_exp_run_of_a_recipe_changes_what_it_names_and_exp_show_says_which(tmp_path):
    repo = make_repo(tmp_path / "repo")
    before = flat(yaml.safe_load((repo / "params.yaml").read_text()))
    # The full data cannot be fetched here: keep the sample source, and run only the download stage.
    run(["dvc", "exp", "run", "-n", "lm", "-S", "recipe=full-lm", "-S", "download.source=sample", "download"], repo)
    after = flat(yaml.safe_load((repo / "params.yaml").read_text()))
    named = flat(yaml.safe_load((repo / "conf/recipe/full-lm.yaml").read_text()))
    changed = {k for k in after if before.get(k) != after[k]}
    assert "train_lm.hidden" in changed and "train.bidirectional" in changed
    assert changed <= set(named)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    recipes = {exp.get("name") or rev["rev"]: exp["data"]["params"]["params.yaml"]["data"]["recipe"]
               for rev in shown for exp in [rev, *[e for x in rev.get("experiments") or [] for e in x["revs"]]]}
    assert recipes["lm"] == "full-lm" and recipes["workspace"] == "full-lm"

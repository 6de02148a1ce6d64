from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ilora_export.errors import IloraError, RecipeError
from ilora_export.train.recipe import (
    AdapterSpec,
    DataConfig,
    Recipe,
    TrainConfig,
    load_recipe,
    recipe_from_dict,
    recipe_keys,
    recipe_to_dict,
)

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

MINIMAL = """\
output_dir: runs/x
data:
  root: data/x
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(err: pytest.ExceptionInfo) -> list[str]:
    """The ``  - key: problem`` lines of a RecipeError message."""
    return [line[4:] for line in err.value.message.splitlines()[1:]]


def fail(tmp_path: Path, text: str, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text), overrides)
    lines = problems_of(err)
    assert err.value.message.splitlines()[0] == f"recipe {tmp_path / 'r.yaml'}: {len(lines)} problem(s)"
    assert all(line.startswith("  - ") for line in err.value.message.splitlines()[1:])
    assert "docs/recipes.md" in err.value.hint
    return lines


# ---------------------------------------------------------------- shipped recipes


def test_recipes_folder_is_not_empty():
    assert {p.name for p in RECIPES} >= {
        "lastfm-smollm2.yaml",
        "ml100k-smollm2.yaml",
        "lastfm-llama2-7b.yaml",
        "quickstart.yaml",
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_names_its_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first in (f"# ilora-export finetune recipes/{path.name}", f"# ilora-export quickstart recipes/{path.name}")
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.output_dir == f"runs/{path.stem}"
    assert recipe.adapter.r % recipe.adapter.num_experts == 0
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe


def test_shipped_recipe_values():
    lastfm = load_recipe(REPO / "recipes/lastfm-smollm2.yaml")
    assert lastfm.base_model == "default"
    assert lastfm.data.root == "../shared/ilora-ref/data/lastfm"
    assert lastfm.sasrec.pretrained == "../shared/ilora-ref/rec_model/lastfm.pt"
    adapter = lastfm.adapter
    assert (adapter.r, adapter.alpha, adapter.num_experts, adapter.gate) == (8, 32.0, 4, "dense")
    assert lastfm.adapter.target_modules == AdapterSpec().target_modules
    assert (lastfm.train.max_steps, lastfm.train.batch_size, lastfm.train.lr) == (300, 4, 5e-4)
    assert lastfm.data.max_train_rows == 4000 and lastfm.train.device == "cpu"

    ml = load_recipe(REPO / "recipes/ml100k-smollm2.yaml")
    assert ml.data.root == "data/ml100k" and ml.sasrec.pretrained is None and ml.sasrec.epochs == 30

    llama = load_recipe(REPO / "recipes/lastfm-llama2-7b.yaml")
    assert llama.base_model == "/path/to/Llama-2-7b-hf" and llama.adapter.gate == "resnet"
    assert (llama.train.device, llama.train.dtype) == ("cuda", "bfloat16")
    assert (llama.train.batch_size, llama.train.grad_accum, llama.train.lr, llama.train.max_steps) == (
        8,
        16,
        7e-4,
        1870,
    )
    assert (llama.train.schedule, llama.train.weight_decay, llama.train.eval_every) == ("official", 1e-5, 374)


def test_docs_cover_every_key():
    docs = (REPO / "docs/recipes.md").read_text(encoding="utf-8")
    missing = [key for key in recipe_keys() if f"`{key}`" not in docs]
    assert not missing


# ---------------------------------------------------------------- defaults and types


def test_minimal_recipe_gets_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe == Recipe(output_dir="runs/x", data=DataConfig(root="data/x"))
    assert recipe.base_model == "default" and recipe.seed == 42
    assert recipe.adapter.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert recipe.train == TrainConfig()
    assert recipe.train.eval_rows == 32


def test_default_lists_are_not_shared():
    a, b = AdapterSpec(), AdapterSpec()
    a.target_modules.append("lm_head")
    assert "lm_head" not in b.target_modules


def test_int_accepted_for_float_and_scientific_notation_without_dot(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL + "adapter:\n  alpha: 16\ntrain:\n  lr: 5e-4\n  max_grad_norm: 2\n"))
    assert recipe.adapter.alpha == 16.0 and isinstance(recipe.adapter.alpha, float)
    assert recipe.train.lr == 5e-4 and isinstance(recipe.train.lr, float)
    assert recipe.train.max_grad_norm == 2.0 and isinstance(recipe.train.max_grad_norm, float)


def test_bool_rejected_for_int_and_float(tmp_path):
    lines = fail(tmp_path, MINIMAL + "seed: true\ntrain:\n  max_steps: false\n  lr: true\n")
    assert lines == [
        "seed: expected an integer, got a boolean (true)",
        "train.max_steps: expected an integer, got a boolean (false)",
        "train.lr: expected a number, got a boolean (true)",
    ]


def test_wrong_types(tmp_path):
    lines = fail(
        tmp_path,
        MINIMAL
        + textwrap.dedent("""\
        base_model: 7
        sasrec:
          epochs: 2.5
        adapter:
          target_modules: q_proj
        train:
          eval_rows: all
        """),
    )
    assert lines == [
        "base_model: expected a string, got an integer (7)",
        "sasrec.epochs: expected an integer, got a number (2.5)",
        "adapter.target_modules: expected a list of strings, got a string ('q_proj')",
        "train.eval_rows: expected an integer or null, got a string ('all')",
    ]


def test_list_items_and_sections_are_type_checked(tmp_path):
    lines = fail(tmp_path, MINIMAL + "adapter:\n  target_modules: [q_proj, 3, q_proj]\ntrain: [1, 2]\n")
    assert lines == [
        "adapter.target_modules[1]: expected a string, got an integer (3)",
        "train: expected a mapping of keys, got a list ([1, 2])",
    ]


def test_optional_fields_accept_null(tmp_path):
    recipe = load_recipe(
        write(tmp_path, MINIMAL + "  max_train_rows: 10\ntrain:\n  eval_rows: null\n"),
        ["data.max_train_rows=null", "adapter.projector_hidden=~"],
    )
    assert recipe.data.max_train_rows is None
    assert recipe.train.eval_rows is None and recipe.adapter.projector_hidden is None


def test_empty_section_takes_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL + "train:\n  # max_steps: 10\n"))
    assert recipe.train == TrainConfig()


# ---------------------------------------------------------------- value checks


def test_r_must_be_divisible_by_num_experts(tmp_path):
    lines = fail(tmp_path, MINIMAL + "adapter:\n  r: 8\n  num_experts: 3\n")
    assert len(lines) == 1
    assert lines[0].startswith("adapter.r: must be divisible by adapter.num_experts (r=8, num_experts=3)")
    # the default r (8) is checked against an overridden num_experts too
    lines = fail(tmp_path, MINIMAL, ["adapter.num_experts=5"])
    assert lines[0].startswith("adapter.r: must be divisible by adapter.num_experts (r=8, num_experts=5)")
    assert load_recipe(write(tmp_path, MINIMAL), ["adapter.r=6", "adapter.num_experts=3"]).adapter.r == 6


def test_cross_check_runs_alongside_other_problems_in_the_section(tmp_path):
    lines = fail(tmp_path, MINIMAL + "adapter:\n  r: 8\n  num_experts: 3\n  dropout: 1.0\n")
    assert lines[0] == "adapter.dropout: must be >= 0 and < 1; got 1.0"
    assert lines[1].startswith("adapter.r: must be divisible by adapter.num_experts")


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("adapter.r", "0", "adapter.r: must be >= 1; got 0"),
        ("adapter.num_experts", "0", "adapter.num_experts: must be >= 1; got 0"),
        ("adapter.dropout", "-0.1", "adapter.dropout: must be >= 0 and < 1; got -0.1"),
        ("adapter.dropout", "1", "adapter.dropout: must be >= 0 and < 1; got 1.0"),
        ("sasrec.dropout", "1.5", "sasrec.dropout: must be >= 0 and < 1; got 1.5"),
        ("adapter.alpha", "0", "adapter.alpha: must be > 0; got 0.0"),
        ("adapter.gate", "sparse", "adapter.gate: must be one of 'dense', 'resnet'; got 'sparse'"),
        ("adapter.target_modules", "[]", "adapter.target_modules: must not be empty"),
        ("train.device", "gpu", "train.device: must be one of 'cpu', 'cuda'; got 'gpu'"),
        ("train.dtype", "fp16", "train.dtype: must be one of 'float32', 'bfloat16', 'float16'; got 'fp16'"),
        ("data.eval_split", "train", "data.eval_split: must be one of 'valid', 'test'; got 'train'"),
        ("train.max_steps", "0", "train.max_steps: must be >= 1; got 0"),
        ("train.batch_size", "-4", "train.batch_size: must be >= 1; got -4"),
        ("train.grad_accum", "0", "train.grad_accum: must be >= 1; got 0"),
        ("sasrec.batch_size", "0", "sasrec.batch_size: must be >= 1; got 0"),
        ("train.lr", "0", "train.lr: must be > 0 and < 10; got 0.0"),
        ("train.eval_rows", "-1", "train.eval_rows: must be >= 0; got -1"),
        ("data.max_train_rows", "0", "data.max_train_rows: must be >= 1; got 0"),
        ("output_dir", "''", "output_dir: must not be empty"),
    ],
)
def test_value_checks(tmp_path, key, value, problem):
    assert fail(tmp_path, MINIMAL, [f"{key}={value}"]) == [problem]


def test_non_finite_numbers_are_refused_all_at_once(tmp_path):
    lines = fail(
        tmp_path,
        MINIMAL + "train:\n  lr: .inf\n",
        [
            "sasrec.lr=.nan",
            "train.max_grad_norm=.inf",
            "adapter.alpha=-.inf",
            "train.weight_decay=.nan",
        ],
    )
    assert lines == [
        "sasrec.lr: must be a finite number; got nan",
        "adapter.alpha: must be a finite number; got -inf",
        "train.lr: must be a finite number; got inf",
        "train.weight_decay: must be a finite number; got nan",
        "train.max_grad_norm: must be a finite number; got inf",
    ]


def test_learning_rates_beyond_any_sane_value_are_refused(tmp_path):
    # 1e39 is finite but overflows float32 inside the optimizer (a RuntimeError traceback before)
    lines = fail(tmp_path, MINIMAL, ["train.lr=1e39", "sasrec.lr=10"])
    assert [line.split(":")[0] for line in lines] == ["sasrec.lr", "train.lr"]
    assert all("must be > 0 and < 10" in line for line in lines), lines


def test_boundary_values_are_accepted(tmp_path):
    recipe = load_recipe(
        write(tmp_path, MINIMAL),
        [
            "adapter.dropout=0",
            "adapter.num_experts=1",
            "adapter.r=1",
            "train.eval_rows=0",
            "train.warmup_steps=0",
        ],
    )
    assert recipe.adapter.dropout == 0.0 and recipe.adapter.num_experts == 1 and recipe.train.eval_rows == 0


def test_duplicate_target_modules(tmp_path):
    assert fail(tmp_path, MINIMAL, ["adapter.target_modules=[q_proj, v_proj, q_proj]"]) == [
        "adapter.target_modules: lists 'q_proj' more than once"
    ]


# ---------------------------------------------------------------- keys


def test_missing_required_keys(tmp_path):
    assert fail(tmp_path, "seed: 1\n") == ["output_dir: missing required key", "data.root: missing required key"]
    assert fail(tmp_path, "output_dir: x\ndata:\n  eval_split: test\n") == ["data.root: missing required key"]


def test_unknown_key_suggests_close_match(tmp_path):
    lines = fail(tmp_path, MINIMAL + "train:\n  max_stpes: 10\nadaptor:\n  r: 4\n")
    assert lines == [
        "adaptor: unknown key (did you mean adapter?)",
        "train.max_stpes: unknown key (did you mean train.max_steps?)",
    ]


def test_unknown_key_suggests_the_section_it_belongs_to(tmp_path):
    lines = fail(tmp_path, MINIMAL + "num_experts: 2\ntrain:\n  gate: dense\n")
    assert lines == [
        "num_experts: unknown key (did you mean adapter.num_experts?)",
        "train.gate: unknown key (did you mean adapter.gate?)",
    ]


def test_unknown_key_without_match_lists_known_keys(tmp_path):
    (line,) = fail(tmp_path, MINIMAL + "zzz: 1\n")
    assert line.startswith("zzz: unknown key (known keys here: output_dir, base_model, seed, data,")


def test_all_problems_reported_at_once(tmp_path):
    lines = fail(
        tmp_path,
        MINIMAL
        + textwrap.dedent("""\
        adapter:
          r: 8
          num_experts: 3
        train:
          max_stpes: 10
          batch_size: true
        """),
    )
    assert len(lines) == 3
    assert lines[0].startswith("adapter.r: must be divisible by adapter.num_experts")
    assert lines[1] == "train.max_stpes: unknown key (did you mean train.max_steps?)"
    assert lines[2] == "train.batch_size: expected an integer, got a boolean (true)"


# ---------------------------------------------------------------- overrides


def test_overrides_set_nested_values_parsed_as_yaml(tmp_path):
    recipe = load_recipe(
        write(tmp_path, MINIMAL + "train:\n  max_steps: 300\n"),
        [
            "train.max_steps=10",
            "adapter.num_experts=1",
            "data.max_train_rows=null",
            "train.lr=2e-4",
            "adapter.target_modules=[q_proj, v_proj]",
            "base_model=/models/llama",
            "data.prompt_file=prompts/a=b.txt",  # only the first '=' separates key and value
            " seed = 7",
        ],
    )
    assert recipe.train.max_steps == 10
    assert recipe.adapter.num_experts == 1
    assert recipe.data.max_train_rows is None
    assert recipe.train.lr == 2e-4
    assert recipe.adapter.target_modules == ["q_proj", "v_proj"]
    assert recipe.base_model == "/models/llama"
    assert recipe.data.prompt_file == "prompts/a=b.txt"
    assert recipe.seed == 7


def test_later_override_wins_and_mapping_merges_into_section(tmp_path):
    recipe = load_recipe(
        write(tmp_path, MINIMAL + "adapter:\n  gate: resnet\n"),
        ["train.max_steps=1", "train.max_steps=2", "adapter={r: 4, num_experts: 2}"],
    )
    assert recipe.train.max_steps == 2
    assert (recipe.adapter.r, recipe.adapter.num_experts, recipe.adapter.gate) == (4, 2, "resnet")


def test_override_creates_a_missing_section(tmp_path):
    recipe = load_recipe(write(tmp_path, "output_dir: x\n"), ["data.root=d"])
    assert recipe.data.root == "d"


def test_override_problems_reported_with_the_others(tmp_path):
    lines = fail(
        tmp_path,
        MINIMAL + "seed: yes\n",
        [
            "foo",
            "train.max_stpes=3",
            "adapter.r.x=1",
            "train.lr=[",
            "=3",
        ],
    )
    assert lines[0] == "foo: malformed override (expected KEY=VALUE, e.g. train.max_steps=10)"
    assert lines[1] == "train.max_stpes: unknown key (did you mean train.max_steps?) (in override 'train.max_stpes=3')"
    assert lines[2] == "adapter.r.x: adapter.r is a single value, not a section (in override 'adapter.r.x=1')"
    assert lines[3].startswith("train.lr: override value does not parse (line 1, column 2: invalid YAML:")
    assert lines[4] == "=3: malformed override (expected KEY=VALUE, e.g. train.max_steps=10)"
    assert lines[5] == "seed: expected an integer, got a boolean (true)"
    assert len(lines) == 6


def test_override_value_is_type_checked(tmp_path):
    assert fail(tmp_path, MINIMAL, ["train.max_steps=ten"]) == [
        "train.max_steps: expected an integer, got a string ('ten')"
    ]


# ---------------------------------------------------------------- files and YAML


def test_bad_yaml_names_the_line(tmp_path):
    lines = fail(tmp_path, "output_dir: x\ndata:\n  root: y\n   bad: [1\n")
    assert lines == [f"{tmp_path / 'r.yaml'} line 4, column 7: invalid YAML: mapping values are not allowed here"]


def test_unclosed_bracket_names_a_line(tmp_path):
    (line,) = fail(tmp_path, "output_dir: x\nadapter:\n  target_modules: [q_proj, v_proj\ntrain: {}\n")
    assert " line " in line and "invalid YAML" in line


def test_bad_yaml_reported_with_override_problems(tmp_path):
    lines = fail(tmp_path, "a: [\n", ["oops"])
    assert len(lines) == 2 and "invalid YAML" in lines[0] and lines[1].startswith("oops: malformed override")


def test_duplicate_yaml_key_is_reported(tmp_path):
    lines = fail(tmp_path, MINIMAL + "seed: 1\nseed: 2\n")
    assert lines == [f"{tmp_path / 'r.yaml'} line 5: duplicate key 'seed'"]


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    recipe = load_recipe(
        write(
            tmp_path,
            MINIMAL + "train: &t {max_steps: 5, batch_size: 2}\n"
            "sasrec:\n  <<: {epochs: 3, batch_size: 8}\n  batch_size: 16\n",
        )
    )
    assert recipe.sasrec.epochs == 3 and recipe.sasrec.batch_size == 16
    # the merged keys are validated like any other
    lines = fail(tmp_path, MINIMAL + "train:\n  <<: {max_steps: 5, max_stpes: 2}\n  max_steps: 7\n")
    assert lines == ["train.max_stpes: unknown key (did you mean train.max_steps?)"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("- a\n- b\n", "(top level): expected a mapping of keys, got a list (['a', 'b'])"),
        ("just a string\n", "(top level): expected a mapping of keys, got a string ('just a string')"),
        ("", "(top level): the recipe is empty; expected a mapping of keys"),
        ("# only comments\n", "(top level): the recipe is empty; expected a mapping of keys"),
    ],
)
def test_recipe_must_be_a_mapping(tmp_path, text, problem):
    assert fail(tmp_path, text) == [problem]


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found: .*nope.yaml") as err:
        load_recipe(tmp_path / "nope.yaml")
    assert err.value.hint
    with pytest.raises(RecipeError, match="is a directory"):
        load_recipe(tmp_path)


def test_recipe_error_is_an_ilora_error(tmp_path):
    with pytest.raises(IloraError):
        load_recipe(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- dict round trip


def test_to_dict_is_plain_and_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL), ["adapter.gate=resnet", "train.lr=1e-4"])
    d = recipe_to_dict(recipe)
    assert type(d) is dict and type(d["adapter"]) is dict and type(d["adapter"]["target_modules"]) is list
    assert d["adapter"]["gate"] == "resnet" and d["train"]["lr"] == 1e-4 and d["data"]["root"] == "data/x"
    assert set(d) == {"output_dir", "base_model", "seed", "data", "sasrec", "adapter", "train"}
    d["adapter"]["target_modules"].append("lm_head")
    assert "lm_head" not in recipe.adapter.target_modules
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe


def test_from_dict_validates_with_source_name():
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(
            {"output_dir": "x", "data": {"root": "y"}, "adapter": {"num_experts": 3}}, source="ckpt/recipe"
        )
    assert err.value.message.splitlines()[0] == "recipe ckpt/recipe: 1 problem(s)"
    with pytest.raises(RecipeError, match=r"recipe <dict>: 1 problem\(s\)"):
        recipe_from_dict(["not", "a", "mapping"])


def test_recipe_keys_lists_every_leaf():
    keys = recipe_keys()
    assert keys[:3] == ["output_dir", "base_model", "seed"]
    assert "data.root" in keys and "adapter.target_modules" in keys and "train.eval_rows" in keys
    assert "data" not in keys and len(keys) == len(set(keys)) == 3 + 4 + 8 + 7 + 17

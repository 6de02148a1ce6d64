import subprocess
import sys

import pytest
import yaml

from ilora_export.cli import COMMANDS
from tests.factories import cli_exit_code


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    assert cli_exit_code([command, "--help"]) == 0
    assert "Usage: " in capsys.readouterr().out


def test_help_does_not_import_torch():
    code = (
        "import sys; from ilora_export.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"for c in {sorted(COMMANDS)!r}:\n"
        "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def _write_recipe(path, tiny_llama_dir, data_dir, out_dir):
    from ilora_export.train.recipe import recipe_to_dict
    from tests.conftest import tiny_recipe

    recipe = recipe_to_dict(tiny_recipe(tiny_llama_dir, data_dir, out_dir))
    path.write_text("# ilora-export finetune recipe.yaml\n" + yaml.safe_dump(recipe))
    return path


def test_finetune_command_with_overrides(tmp_path, tiny_llama_dir, toy_data_dir, capsys):
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_llama_dir, toy_data_dir, tmp_path / "run")
    args = ["finetune", str(recipe), "train.max_steps=1", "train.eval_rows=2", f"output_dir={tmp_path / 'o'}"]
    assert cli_exit_code(args) == 0
    out = capsys.readouterr().out
    assert "checkpoint:" in out and "(1 steps" in out and "ValidRatio" in out
    assert (tmp_path / "o" / "ckpt" / "config.json").is_file()


def test_finetune_bad_recipe_prints_every_problem_and_a_hint(tmp_path, tiny_llama_dir, toy_data_dir, capsys):
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_llama_dir, toy_data_dir, tmp_path / "run")
    assert cli_exit_code(["finetune", str(recipe), "train.max_stpes=1", "adapter.num_experts=3"]) == 1
    err = capsys.readouterr().err
    assert "2 problem" in err and "train.max_stpes" in err and "num_experts" in err
    assert "Hint:" in err and "Traceback" not in err


def test_base_model_that_is_not_a_causal_lm_is_refused(tmp_path, tiny_llama_dir, toy_data_dir, capsys):
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(bert)
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_llama_dir, toy_data_dir, tmp_path / "run")
    assert cli_exit_code(["finetune", str(recipe), f"base_model={bert}"]) == 1
    err = capsys.readouterr().err
    assert "not a causal LM" in err and "Traceback" not in err


def test_eval_help_documents_the_catalogue_override(capsys):
    assert cli_exit_code(["eval", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--allow-catalogue-mismatch" in out and "summary.json records the mismatch" in out

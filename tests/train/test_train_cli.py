"""`openhart train / cache / export` as a user meets them: bad input stops early with a clear message."""

import json
import threading

import pytest

from openhart.cli import main
from openhart.outputs import destination_lock

from .conftest import REPO, tokenizer_config, transformer_config, write_config


def _run(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def test_unknown_config_key(shapes_dir, tmp_path, capsys):
    config = tokenizer_config(tmp_path / "run", shapes_dir)
    config["optim"]["learning_rate"] = 1e-3
    code, err = _run(capsys, "train", "tokenizer", "--config", str(write_config(tmp_path / "c.json", config)))
    assert code == 2 and "unknown OptimConfig field(s) ['learning_rate']" in err
    config["optim"].pop("learning_rate")
    config["colour"] = 1
    code, err = _run(capsys, "train", "tokenizer", "--config", str(write_config(tmp_path / "c.json", config)))
    assert code == 2 and "unknown TokenizerTrainConfig field(s) ['colour']" in err
    config.pop("colour")
    write_config(tmp_path / "c.json", config)
    code, err = _run(capsys, "train", "tokenizer", "--config", str(tmp_path / "c.json"), "--set", "run.stpes=3")
    assert code == 2 and "stpes" in err
    assert not (tmp_path / "run").exists()


def test_dataset_without_images_or_captions(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    config = write_config(tmp_path / "c.json", tokenizer_config(tmp_path / "run", tmp_path / "empty"))
    code, err = _run(capsys, "train", "tokenizer", "--config", str(config))
    assert code == 2 and "no images in" in err
    (tmp_path / "uncaptioned").mkdir()
    from PIL import Image
    Image.new("RGB", (32, 32)).save(tmp_path / "uncaptioned" / "a.png")
    config = write_config(tmp_path / "c.json", tokenizer_config(tmp_path / "run", tmp_path / "uncaptioned"))
    code, err = _run(capsys, "train", "tokenizer", "--config", str(config))
    assert code == 2 and "have no caption" in err
    assert not (tmp_path / "run").exists()


def test_bad_image_size(shapes_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.json", tokenizer_config(tmp_path / "run", shapes_dir, data={"resolution": 48}))
    code, err = _run(capsys, "train", "tokenizer", "--config", str(config))
    assert code == 2 and "cannot take 48x48" in err and "one of 4, 8, 12, 16, 24, 32, 64" in err


def test_resume_from_a_non_checkpoint_or_another_architecture(shapes_dir, latent_cache, tmp_path, capsys):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("hello")
    tf = write_config(tmp_path / "tf.json", transformer_config(tmp_path / "tf", latent_cache, run={"steps": 1}))
    code, err = _run(capsys, "train", "transformer", "--config", str(tf), "--resume", str(bogus))
    assert code == 2 and "not a readable openhart checkpoint" in err
    code, err = _run(capsys, "train", "transformer", "--config", str(tf), "--resume", str(tmp_path / "nowhere"))
    assert code == 2 and "resume path not found" in err
    assert _run(capsys, "train", "transformer", "--config", str(tf), "--quiet")[0] == 0
    wider = transformer_config(tmp_path / "tf2", latent_cache, model={"transformer": {"embed_dim": 96, "num_heads": 4, "depth": 1}})
    code, err = _run(capsys, "train", "transformer", "--config", str(write_config(tmp_path / "tf2.json", wider)),
                     "--resume", str(tmp_path / "tf" / "checkpoints"))
    assert code == 2 and "another architecture" in err
    tok = write_config(tmp_path / "tok.json", tokenizer_config(tmp_path / "tok", shapes_dir))
    code, err = _run(capsys, "train", "tokenizer", "--config", str(tok), "--resume", str(tmp_path / "tf" / "checkpoints"))
    assert code == 2 and "another architecture" in err
    assert not (tmp_path / "tok").exists() and not (tmp_path / "tf2").exists()


def test_cache_command_and_its_errors(shapes_dir, tiny_tokenizer_dir, tmp_path, capsys):
    args = ["cache", "--data", str(shapes_dir), "--tokenizer", str(tiny_tokenizer_dir), "--text-encoder", "random",
            "--context-dim", "32", "--context-tokens", "8", "--resolution", "64", "--out", str(tmp_path / "cache")]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["num_examples"] == 8 and manifest["patch_nums"][-1] == 16
    assert "captions longer than 8 tokens were cut" in capsys.readouterr().out
    code, err = _run(capsys, *args)
    assert code == 2 and "already exists" in err
    code, err = _run(capsys, *args[:-1], str(tmp_path / "c2"), "--resolution", "40")
    assert code == 2 and "cannot take 40x40" in err
    bad = list(args)
    bad[bad.index("--tokenizer") + 1] = str(tmp_path / "missing")
    code, err = _run(capsys, *bad[:-1], str(tmp_path / "c3"))
    assert code == 2 and "tokenizer folder not found" in err
    assert not (tmp_path / "c2").exists() and not (tmp_path / "c3").exists()
    assert not list(tmp_path.glob(".c*"))  # no staging folder left behind


def test_transformer_config_cannot_contradict_the_cache(latent_cache, tmp_path, capsys):
    config = transformer_config(tmp_path / "run", latent_cache, model={"transformer": {"vocab_size": 10}})
    code, err = _run(capsys, "train", "transformer", "--config", str(write_config(tmp_path / "c.json", config)))
    assert code == 2 and "vocab_size" in err and "leave it out" in err


@pytest.mark.parametrize("command", ["data", "train", "cache", "export"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "examples:" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.json")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    from openhart.train.train_config import TokenizerTrainConfig, TransformerTrainConfig, load_train_config
    cls = TokenizerTrainConfig if "tokenizer" in path.name else TransformerTrainConfig
    config = load_train_config(cls, path)
    assert config.run.output_dir.startswith("runs/")


def test_progressive_recipe_chains_its_stages():
    """configs/emoji16-recipe.sh: the 64-px stage starts from the 32-px stage's last checkpoint,
    the stages read the caches the recipe builds, and the recipe skips a stage by the file that
    stage writes last (a typo would retrain or start from nothing)."""
    from openhart.train.checkpoint import checkpoint_path
    from openhart.train.train_config import TokenizerTrainConfig, TransformerTrainConfig, load_train_config
    recipe = (REPO / "configs" / "emoji16-recipe.sh").read_text()
    tokenizer = load_train_config(TokenizerTrainConfig, REPO / "configs" / "emoji16-tokenizer.json")
    low, high = (load_train_config(TransformerTrainConfig, REPO / "configs" / f"emoji16-stage{r}.json")
                 for r in (32, 64))
    assert high.init_from == str(checkpoint_path(f"{low.run.output_dir}/checkpoints", low.run.steps))
    for stage in (low, high):
        assert str(checkpoint_path(f"{stage.run.output_dir}/checkpoints", stage.run.steps)) in recipe
        assert stage.cache in recipe and (stage.heldout_cache is None or stage.heldout_cache in recipe)
    assert f"{tokenizer.run.output_dir}/model" in recipe and f"export {high.run.output_dir} " in recipe
    assert tuple(tokenizer.model["patch_nums"][:6]) == (1, 2, 3, 4, 6, 8)  # a 32-px image's 8x8 latent


def test_codebook_recipe_overrides_the_shipped_configs():
    """configs/emoji-v2048-recipe.sh: its --set overrides of the shipped configs are valid keys,
    its transformer reads the caches it builds from its own tokenizer, and it skips training by
    the last checkpoint that run writes."""
    import re
    import shlex

    from openhart.train.checkpoint import checkpoint_path
    from openhart.train.train_config import TokenizerTrainConfig, TransformerTrainConfig, load_train_config
    recipe = (REPO / "configs" / "emoji-v2048-recipe.sh").read_text()
    variables = dict(re.findall(r"^(\w+)=([\w/.-]+)$", recipe, flags=re.M))
    commands = recipe.replace("\\\n", " ")  # one line per command
    configs = {}
    for kind, cls in (("tokenizer", TokenizerTrainConfig), ("transformer", TransformerTrainConfig)):
        words = shlex.split(re.search(rf"openhart train {kind} (.*)$", commands, flags=re.M).group(1))
        words = [re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], w) for w in words]
        overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        configs[kind] = load_train_config(cls, REPO / words[words.index("--config") + 1], overrides)
    tokenizer, transformer = configs["tokenizer"], configs["transformer"]
    assert tokenizer.model["vocab_size"] == 2048 and transformer.run.compile
    assert f"--tokenizer {tokenizer.run.output_dir}/model" in commands.replace("$tokenizer", variables["tokenizer"])
    built = re.search(r"^\s*cache=(cache/[\w.-]+)\$\(\[ \$split = heldout \] && echo -heldout", recipe, flags=re.M)
    assert (transformer.cache, transformer.heldout_cache) == (built.group(1), built.group(1) + "-heldout")
    assert str(checkpoint_path(f"{transformer.run.output_dir}/checkpoints", transformer.run.steps)) in recipe
    assert f"export {transformer.run.output_dir} " in recipe


def test_a_second_run_into_a_busy_run_folder_is_refused(shapes_dir, tmp_path, capsys):
    """One writer per run folder: while another run holds it, `openhart train` into it stops at
    once with a one-line error and writes nothing there."""
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.json", tokenizer_config(run, shapes_dir))
    held, release = threading.Event(), threading.Event()

    def other_run():
        with destination_lock(run):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert held.wait(30)
        code, err = _run(capsys, "train", "tokenizer", "--config", str(config), "--quiet")
    finally:
        release.set()
        thread.join(30)
    assert code == 2 and "another openhart process is writing" in err and len(err.strip().splitlines()) == 1
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    code, err = _run(capsys, "train", "tokenizer", "--config", str(config), "--quiet")
    assert code == 0, err
    assert (run / "checkpoints").is_dir() and not (tmp_path / ".run.lock").exists()
